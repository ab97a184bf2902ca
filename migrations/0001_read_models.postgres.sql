-- Read models (postgres): the tables that projections keep from the logs (see docs/read-models.md).
-- NUMERIC(78,0) columns hold exact integers of any size (smallest units, ticks, lots); *_str
-- columns hold the API-ready decimal strings rendered from them.

-- Bookkeeping ------------------------------------------------------------------------------

CREATE TABLE projection_tracking (
    name TEXT PRIMARY KEY,          -- a projection, or "<name>@<shadow>" while rebuilding beside
    source TEXT NOT NULL,           -- the log it follows: exchange or requests
    position BIGINT NOT NULL,       -- last log position applied (same transaction as the rows)
    generation TEXT NOT NULL,       -- changes when a rebuild swaps new tables in
    state TEXT NOT NULL,            -- small private state (listings it renders with, counters)
    updated_at TEXT
);

CREATE TABLE projection_errors (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,       -- the event that failed; the projection stopped before it
    message TEXT NOT NULL,
    at TEXT NOT NULL
);

CREATE TABLE projection_rebuilds (
    token TEXT PRIMARY KEY,         -- a rebuild message's id: a repeated message is a no-op
    name TEXT NOT NULL,
    finished_at TEXT NOT NULL
);

-- User settings (not a projection; see docs/read-models.md on preferences)
CREATE TABLE preferences (
    user_id TEXT PRIMARY KEY,
    kinds TEXT NOT NULL,            -- JSON list of notification kinds
    channels TEXT NOT NULL,         -- JSON list of channels
    updated_at TEXT NOT NULL
);

-- users ------------------------------------------------------------------------------------

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,            -- JSON list
    created_at TEXT NOT NULL,
    position BIGINT NOT NULL
);

-- markets ----------------------------------------------------------------------------------

CREATE TABLE assets (
    symbol TEXT PRIMARY KEY,
    asset_precision INTEGER NOT NULL,
    listed_at TEXT NOT NULL,
    position BIGINT NOT NULL
);

CREATE TABLE markets (
    symbol TEXT PRIMARY KEY,
    base TEXT NOT NULL,
    quote TEXT NOT NULL,
    tick_size TEXT NOT NULL,
    lot_size TEXT NOT NULL,
    min_notional TEXT NOT NULL,
    maker_fee TEXT NOT NULL,
    taker_fee TEXT NOT NULL,
    status TEXT NOT NULL,
    listed_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    position BIGINT NOT NULL
);

-- balances ---------------------------------------------------------------------------------

CREATE TABLE balances (
    account TEXT NOT NULL,          -- a user id, or @custody / @fees
    asset TEXT NOT NULL,
    available NUMERIC(78,0) NOT NULL,
    frozen NUMERIC(78,0) NOT NULL,
    available_str TEXT NOT NULL,
    frozen_str TEXT NOT NULL,
    total_str TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (account, asset)
);

-- orders -----------------------------------------------------------------------------------

CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    user_id TEXT,
    client_order_id TEXT,
    market TEXT,
    side TEXT,
    type TEXT,
    price NUMERIC(78,0),
    quantity NUMERIC(78,0),
    quote_quantity NUMERIC(78,0),
    filled NUMERIC(78,0) NOT NULL,
    filled_quote NUMERIC(78,0) NOT NULL,
    fee NUMERIC(78,0) NOT NULL,
    price_str TEXT,
    quantity_str TEXT,
    quote_quantity_str TEXT,
    filled_str TEXT NOT NULL,
    remaining_str TEXT,
    filled_quote_str TEXT NOT NULL,
    average_price_str TEXT,
    fee_str TEXT NOT NULL,
    fee_asset TEXT,
    time_in_force TEXT,
    post_only BOOLEAN,
    self_trade_prevention TEXT,
    status TEXT NOT NULL,
    reject_reason TEXT,
    reject_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    created_position BIGINT NOT NULL,
    position BIGINT NOT NULL
);
CREATE INDEX orders_user ON orders (user_id, created_position);
CREATE INDEX orders_user_market ON orders (user_id, market, created_position);

-- fills ------------------------------------------------------------------------------------

CREATE TABLE fills (
    trade_id BIGINT NOT NULL,
    liquidity TEXT NOT NULL,        -- maker or taker
    order_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    market TEXT NOT NULL,
    side TEXT NOT NULL,
    price NUMERIC(78,0) NOT NULL,
    quantity NUMERIC(78,0) NOT NULL,
    quote_quantity NUMERIC(78,0) NOT NULL,
    fee NUMERIC(78,0) NOT NULL,
    price_str TEXT NOT NULL,
    quantity_str TEXT NOT NULL,
    quote_quantity_str TEXT NOT NULL,
    fee_str TEXT NOT NULL,
    fee_asset TEXT NOT NULL,
    time TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (trade_id, liquidity)
);
CREATE INDEX fills_user ON fills (user_id, trade_id);
CREATE INDEX fills_order ON fills (order_id, trade_id);

-- ledger -----------------------------------------------------------------------------------

CREATE TABLE ledger (
    position BIGINT NOT NULL,
    fact_index INTEGER NOT NULL,
    account TEXT NOT NULL,
    asset TEXT NOT NULL,
    kind TEXT NOT NULL,
    ref TEXT,
    event_id TEXT NOT NULL,
    available_delta NUMERIC(78,0) NOT NULL,
    frozen_delta NUMERIC(78,0) NOT NULL,
    available_delta_str TEXT NOT NULL,
    frozen_delta_str TEXT NOT NULL,
    time TEXT NOT NULL,
    PRIMARY KEY (position, fact_index, account, asset)
);
CREATE INDEX ledger_account ON ledger (account, position);

-- withdrawals ------------------------------------------------------------------------------

CREATE TABLE withdrawals (
    withdrawal_id TEXT PRIMARY KEY,
    user_id TEXT,
    asset TEXT,
    amount NUMERIC(78,0),
    amount_str TEXT,
    reference TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    created_position BIGINT NOT NULL,
    position BIGINT NOT NULL
);
CREATE INDEX withdrawals_user ON withdrawals (user_id, created_position);

-- book -------------------------------------------------------------------------------------

CREATE TABLE book_levels (
    market TEXT NOT NULL,
    side TEXT NOT NULL,             -- buy (bids) or sell (asks)
    price NUMERIC(78,0) NOT NULL,
    quantity NUMERIC(78,0) NOT NULL,
    price_str TEXT NOT NULL,
    quantity_str TEXT NOT NULL,
    PRIMARY KEY (market, side, price)
);

CREATE TABLE book_orders (
    order_id TEXT PRIMARY KEY,      -- resting orders only: what the depth is the sum of
    market TEXT NOT NULL,
    side TEXT NOT NULL,
    price NUMERIC(78,0) NOT NULL,
    quantity NUMERIC(78,0) NOT NULL,
    remaining NUMERIC(78,0) NOT NULL
);

CREATE TABLE book_state (
    market TEXT PRIMARY KEY,
    sequence BIGINT NOT NULL,       -- +1 per outcome that changes this market's depth
    position BIGINT NOT NULL
);

CREATE TABLE book_changes (
    market TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    side TEXT NOT NULL,
    price NUMERIC(78,0) NOT NULL,
    quantity NUMERIC(78,0) NOT NULL,            -- the level's new total; 0 removes it
    price_str TEXT NOT NULL,
    quantity_str TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (market, sequence, side, price)
);

-- trades -----------------------------------------------------------------------------------

CREATE TABLE trades (
    trade_id BIGINT PRIMARY KEY,
    market TEXT NOT NULL,
    price NUMERIC(78,0) NOT NULL,
    quantity NUMERIC(78,0) NOT NULL,
    quote_quantity NUMERIC(78,0) NOT NULL,
    price_str TEXT NOT NULL,
    quantity_str TEXT NOT NULL,
    quote_quantity_str TEXT NOT NULL,
    taker_side TEXT NOT NULL,
    time TEXT NOT NULL,
    position BIGINT NOT NULL
);
CREATE INDEX trades_market ON trades (market, trade_id);

-- candles ----------------------------------------------------------------------------------

CREATE TABLE candles (
    market TEXT NOT NULL,
    period TEXT NOT NULL,           -- 1m 5m 15m 1h 4h 1d
    open_time BIGINT NOT NULL,      -- epoch seconds, a multiple of the period
    open NUMERIC(78,0) NOT NULL,
    high NUMERIC(78,0) NOT NULL,
    low NUMERIC(78,0) NOT NULL,
    close NUMERIC(78,0) NOT NULL,
    volume NUMERIC(78,0) NOT NULL,              -- lots
    quote_volume NUMERIC(78,0) NOT NULL,        -- quote units
    trades BIGINT NOT NULL,
    open_str TEXT NOT NULL,
    high_str TEXT NOT NULL,
    low_str TEXT NOT NULL,
    close_str TEXT NOT NULL,
    volume_str TEXT NOT NULL,
    quote_volume_str TEXT NOT NULL,
    PRIMARY KEY (market, period, open_time)
);

-- ticker -----------------------------------------------------------------------------------

CREATE TABLE ticker_buckets (
    market TEXT NOT NULL,
    minute BIGINT NOT NULL,         -- epoch seconds of the minute
    open NUMERIC(78,0) NOT NULL,
    high NUMERIC(78,0) NOT NULL,
    low NUMERIC(78,0) NOT NULL,
    close NUMERIC(78,0) NOT NULL,
    volume NUMERIC(78,0) NOT NULL,
    quote_volume NUMERIC(78,0) NOT NULL,
    trades BIGINT NOT NULL,
    PRIMARY KEY (market, minute)
);

CREATE TABLE tickers (
    market TEXT PRIMARY KEY,
    last NUMERIC(78,0),
    last_trade_id BIGINT,
    time TEXT,
    window_start BIGINT,
    open NUMERIC(78,0),
    high NUMERIC(78,0),
    low NUMERIC(78,0),
    volume NUMERIC(78,0) NOT NULL,
    quote_volume NUMERIC(78,0) NOT NULL,
    trades BIGINT NOT NULL,
    last_str TEXT,
    open_str TEXT,
    high_str TEXT,
    low_str TEXT,
    volume_str TEXT NOT NULL,
    quote_volume_str TEXT NOT NULL,
    change_str TEXT,
    change_percent TEXT,
    position BIGINT NOT NULL
);

-- notifications ----------------------------------------------------------------------------

CREATE TABLE notifications (
    notification_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,             -- JSON
    time TEXT NOT NULL,
    position BIGINT NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, notification_id);

-- event index ------------------------------------------------------------------------------

CREATE TABLE outcome_index (
    request_id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,  -- uuid5(request_id, "outcome")
    position BIGINT NOT NULL UNIQUE,
    seq BIGINT NOT NULL,
    request_position BIGINT NOT NULL,
    actor TEXT,
    command TEXT,
    status TEXT NOT NULL,           -- accepted or rejected
    reason TEXT,
    message TEXT,
    facts TEXT NOT NULL,            -- JSON list of fact types
    time TEXT NOT NULL
);

CREATE TABLE request_index (
    event_id TEXT PRIMARY KEY,      -- the request id
    position BIGINT NOT NULL UNIQUE,
    actor TEXT,
    command TEXT,
    time TEXT NOT NULL
);
