-- Read models (sqlite): the tables that projections keep from the logs (see docs/read-models.md).
-- Amounts, prices and quantities (smallest units, ticks, lots) are exact integers of any size kept
-- as decimal text: SQLite's integers stop at 64 bits. *_str columns hold the API-ready decimal
-- strings rendered from them. PostgreSQL keeps the same columns as NUMERIC(78,0).

-- Bookkeeping ------------------------------------------------------------------------------

CREATE TABLE projection_tracking (
    name TEXT PRIMARY KEY,          -- a projection, or "<name>@<shadow>" while rebuilding beside
    source TEXT NOT NULL,           -- the log it follows: exchange or requests
    position INTEGER NOT NULL,       -- last log position applied (same transaction as the rows)
    generation TEXT NOT NULL,       -- changes when a rebuild swaps new tables in
    state TEXT NOT NULL,            -- small private state (listings it renders with, counters)
    updated_at TEXT
);

CREATE TABLE projection_errors (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,       -- the event that failed; the projection stopped before it
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
    position INTEGER NOT NULL
);

-- markets ----------------------------------------------------------------------------------

CREATE TABLE assets (
    symbol TEXT PRIMARY KEY,
    asset_precision INTEGER NOT NULL,
    listed_at TEXT NOT NULL,
    position INTEGER NOT NULL
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
    position INTEGER NOT NULL
);

-- balances ---------------------------------------------------------------------------------

CREATE TABLE balances (
    account TEXT NOT NULL,          -- a user id, or @custody / @fees
    asset TEXT NOT NULL,
    available TEXT NOT NULL,
    frozen TEXT NOT NULL,
    available_str TEXT NOT NULL,
    frozen_str TEXT NOT NULL,
    total_str TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    position INTEGER NOT NULL,
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
    price TEXT,
    quantity TEXT,
    quote_quantity TEXT,
    filled TEXT NOT NULL,
    filled_quote TEXT NOT NULL,
    fee TEXT NOT NULL,
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
    post_only INTEGER,
    self_trade_prevention TEXT,
    status TEXT NOT NULL,
    reject_reason TEXT,
    reject_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    created_position INTEGER NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX orders_user ON orders (user_id, created_position);
CREATE INDEX orders_user_market ON orders (user_id, market, created_position);

-- fills ------------------------------------------------------------------------------------

CREATE TABLE fills (
    trade_id INTEGER NOT NULL,
    liquidity TEXT NOT NULL,        -- maker or taker
    order_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    market TEXT NOT NULL,
    side TEXT NOT NULL,
    price TEXT NOT NULL,
    quantity TEXT NOT NULL,
    quote_quantity TEXT NOT NULL,
    fee TEXT NOT NULL,
    price_str TEXT NOT NULL,
    quantity_str TEXT NOT NULL,
    quote_quantity_str TEXT NOT NULL,
    fee_str TEXT NOT NULL,
    fee_asset TEXT NOT NULL,
    time TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (trade_id, liquidity)
);
CREATE INDEX fills_user ON fills (user_id, trade_id);
CREATE INDEX fills_order ON fills (order_id, trade_id);

-- ledger -----------------------------------------------------------------------------------

CREATE TABLE ledger (
    position INTEGER NOT NULL,
    fact_index INTEGER NOT NULL,
    account TEXT NOT NULL,
    asset TEXT NOT NULL,
    kind TEXT NOT NULL,
    ref TEXT,
    event_id TEXT NOT NULL,
    available_delta TEXT NOT NULL,
    frozen_delta TEXT NOT NULL,
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
    amount TEXT,
    amount_str TEXT,
    reference TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    created_position INTEGER NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX withdrawals_user ON withdrawals (user_id, created_position);

-- book -------------------------------------------------------------------------------------

CREATE TABLE book_levels (
    market TEXT NOT NULL,
    side TEXT NOT NULL,             -- buy (bids) or sell (asks)
    price TEXT NOT NULL,
    quantity TEXT NOT NULL,
    price_str TEXT NOT NULL,
    quantity_str TEXT NOT NULL,
    PRIMARY KEY (market, side, price)
);

CREATE TABLE book_orders (
    order_id TEXT PRIMARY KEY,      -- resting orders only: what the depth is the sum of
    market TEXT NOT NULL,
    side TEXT NOT NULL,
    price TEXT NOT NULL,
    quantity TEXT NOT NULL,
    remaining TEXT NOT NULL
);

CREATE TABLE book_state (
    market TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,       -- +1 per outcome that changes this market's depth
    position INTEGER NOT NULL
);

CREATE TABLE book_changes (
    market TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    side TEXT NOT NULL,
    price TEXT NOT NULL,
    quantity TEXT NOT NULL,            -- the level's new total; 0 removes it
    price_str TEXT NOT NULL,
    quantity_str TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (market, sequence, side, price)
);

-- trades -----------------------------------------------------------------------------------

CREATE TABLE trades (
    trade_id INTEGER PRIMARY KEY,
    market TEXT NOT NULL,
    price TEXT NOT NULL,
    quantity TEXT NOT NULL,
    quote_quantity TEXT NOT NULL,
    price_str TEXT NOT NULL,
    quantity_str TEXT NOT NULL,
    quote_quantity_str TEXT NOT NULL,
    taker_side TEXT NOT NULL,
    time TEXT NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX trades_market ON trades (market, trade_id);

-- candles ----------------------------------------------------------------------------------

CREATE TABLE candles (
    market TEXT NOT NULL,
    period TEXT NOT NULL,           -- 1m 5m 15m 1h 4h 1d
    open_time INTEGER NOT NULL,      -- epoch seconds, a multiple of the period
    open TEXT NOT NULL,
    high TEXT NOT NULL,
    low TEXT NOT NULL,
    close TEXT NOT NULL,
    volume TEXT NOT NULL,              -- lots
    quote_volume TEXT NOT NULL,        -- quote units
    trades INTEGER NOT NULL,
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
    minute INTEGER NOT NULL,         -- epoch seconds of the minute
    open TEXT NOT NULL,
    high TEXT NOT NULL,
    low TEXT NOT NULL,
    close TEXT NOT NULL,
    volume TEXT NOT NULL,
    quote_volume TEXT NOT NULL,
    trades INTEGER NOT NULL,
    PRIMARY KEY (market, minute)
);

CREATE TABLE tickers (
    market TEXT PRIMARY KEY,
    last TEXT,
    last_trade_id INTEGER,
    time TEXT,
    window_start INTEGER,
    open TEXT,
    high TEXT,
    low TEXT,
    volume TEXT NOT NULL,
    quote_volume TEXT NOT NULL,
    trades INTEGER NOT NULL,
    last_str TEXT,
    open_str TEXT,
    high_str TEXT,
    low_str TEXT,
    volume_str TEXT NOT NULL,
    quote_volume_str TEXT NOT NULL,
    change_str TEXT,
    change_percent TEXT,
    position INTEGER NOT NULL
);

-- notifications ----------------------------------------------------------------------------

CREATE TABLE notifications (
    notification_id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,             -- JSON
    time TEXT NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, notification_id);

-- event index ------------------------------------------------------------------------------

CREATE TABLE outcome_index (
    request_id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,  -- uuid5(request_id, "outcome")
    position INTEGER NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    request_position INTEGER NOT NULL,
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
    position INTEGER NOT NULL UNIQUE,
    actor TEXT,
    command TEXT,
    time TEXT NOT NULL
);
