-- wrk script of bench/api.py: each wrk thread acts as one trader (its token is the thread's
-- argument), places a resting limit buy, and cancels the orders its placements returned.
-- Every place or cancel is one request; a response that is not 200/202 counts as an error.
-- Usage: wrk -t T -c C -d S -s bench/api_orders.lua URL -- SUFFIX TOKEN1 ... TOKENT
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  suffix = args[1] or ""
  if suffix == "-" then suffix = "" end
  token = args[1 + id]
  queue, head, tail = {}, 1, 0
  placed, cancelled, failed = 0, 0, 0
  place_headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
  cancel_headers = {["Authorization"] = "Bearer " .. token}
  place_body = '{"market":"BTC-USDT","side":"buy","type":"limit","price":"100.00","quantity":"0.01"}'
end

function request()
  if tail >= head then
    local order_id = queue[head]
    queue[head] = nil
    head = head + 1
    return wrk.format("DELETE", "/v1/orders/" .. order_id .. suffix, cancel_headers)
  end
  return wrk.format("POST", "/v1/orders" .. suffix, place_headers, place_body)
end

function response(status, headers, body)
  if status ~= 200 and status ~= 202 then
    failed = failed + 1
    return
  end
  local order_id = body:match('"order_id":"([%x-]+)"')
  local event_id = body:match('"event_id":"([%x-]+)"')
  local is_cancel = body:find('"status":"cancelled"', 1, true) or (event_id and event_id ~= order_id)
  if is_cancel then
    cancelled = cancelled + 1
  elseif order_id then
    placed = placed + 1
    tail = tail + 1
    queue[tail] = order_id
  end
end

function done(summary, latency, requests)
  local p, c, f = 0, 0, 0
  for _, thread in ipairs(threads) do
    p = p + thread:get("placed")
    c = c + thread:get("cancelled")
    f = f + thread:get("failed")
  end
  io.write(string.format("WRK placed=%d cancelled=%d failed=%d\n", p, c, f))
  for _, q in ipairs({50, 90, 95, 99}) do
    io.write(string.format("WRK p%d=%.3f\n", q, latency:percentile(q) / 1000.0))
  end
  io.write(string.format("WRK requests=%d seconds=%.3f errors=%d\n", summary.requests,
    summary.duration / 1e6, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
