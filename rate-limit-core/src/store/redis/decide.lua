-- The entry point: decides a batch of checks, one after the other in the order given, all at
-- one instant, exactly as separate calls at that instant would.
--
-- KEYS: the state keys of every check, in order: one per limit. The keys of one check share a
-- hash tag; a key may appear in several checks.
-- ARGV: now in ticks ('' to read the server's TIME, once for the whole call), then for each
-- check: its number of limits n, cost, commit ('1' or '0'), then six integers per limit:
-- algorithm code, limit, burst, period, interval, tau.
-- Returns one element per check: five integers per limit (allowed 1/0, capacity, remaining,
-- reset after, retry after or -1), or, if that check failed, its error message as a string.
-- A check that fails (a key of the wrong type, ...) leaves the text states as they were before
-- it, and the other checks of the call are decided as if it had not been sent.
local algorithms = {
  token_bucket, leaky_bucket, fixed_window, sliding_window_log, sliding_window, gcra,
}

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end

-- The limit whose six integers start after ARGV[b], as its algorithm and parameters. Checks of
-- one call mostly repeat the same limits: the last limit read at each position in a check is
-- kept, and reused when its six arguments are the same strings (Lua strings are interned, so
-- comparing them costs no more than comparing numbers).
local last_limits = {}
local function limit_at(i, b)
  local code, limit, burst, period, interval, tau =
    ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  local last = last_limits[i]
  if last and last.code == code and last.limit == limit and last.burst == burst
    and last.period == period and last.interval == interval and last.tau == tau then
    return last.algorithm, last.p
  end
  local algorithm = algorithms[tonumber(code)]
  if not algorithm then
    error('rate-limit: unknown algorithm code ' .. tostring(code), 0)
  end
  local p = {
    limit = tonumber(limit),
    burst = tonumber(burst),
    period = tonumber(period),
    interval = tonumber(interval),
    tau = tonumber(tau),
  }
  last_limits[i] = {
    code = code, limit = limit, burst = burst, period = period, interval = interval, tau = tau,
    algorithm = algorithm, p = p,
  }
  return algorithm, p
end

-- One check: its keys are KEYS[k + 1 .. k + n], its limits' integers start after ARGV[a].
-- All or nothing: decide every limit without charging, then charge only if all allow.
local function check(k, a, n, cost, commit)
  if n == 1 then
    local algorithm, p = limit_at(1, a)
    local r = algorithm(KEYS[k + 1], now, p, cost, commit)
    if r[1] then
      r[1] = 1
    else
      r[1] = 0
    end
    return r
  end
  journal = {}
  local raws = {}
  local all = true
  for i = 1, n do
    local algorithm, p = limit_at(i, a + (i - 1) * 6)
    raws[i] = algorithm(KEYS[k + i], now, p, cost, false)
    all = all and raws[i][1]
  end
  if all and commit then
    for i = 1, n do
      local algorithm, p = limit_at(i, a + (i - 1) * 6)
      raws[i] = algorithm(KEYS[k + i], now, p, cost, true)
    end
  end
  local out = {}
  for i = 1, n do
    local r = raws[i]
    if r[1] then
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
    for j = 2, 5 do
      out[#out + 1] = r[j]
    end
  end
  return out
end

local replies = {}
local k, a = 0, 1
while a < #ARGV do
  local n = tonumber(ARGV[a + 1])
  local cost = tonumber(ARGV[a + 2])
  local commit = ARGV[a + 3] == '1'
  local ok, out = pcall(check, k, a + 3, n, cost, commit)
  if not ok then
    rollback_states()
    -- redis.call raises a table { err = message } in some versions, the message in others;
    -- error() raises the message.
    if type(out) == 'table' and out.err then
      out = out.err
    end
    out = tostring(out)
  end
  journal = nil
  replies[#replies + 1] = out
  k = k + n
  a = a + 3 + n * 6
end
flush_states()
return replies
