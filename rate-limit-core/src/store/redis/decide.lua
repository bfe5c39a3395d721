-- The entry point. KEYS: one state key per limit, all with the same hash tag.
-- ARGV: now in ticks ('' to read the server's TIME), cost, commit ('1' or '0'), then six
-- integers per limit: algorithm code, limit, burst, period, interval, tau.
-- Returns five integers per limit: allowed (1/0), capacity, remaining, reset after, retry after
-- (-1 for none).
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
local cost = tonumber(ARGV[2])
local commit = ARGV[3] == '1'

local function run(i, charge)
  local b = 3 + (i - 1) * 6
  local p = {
    limit = tonumber(ARGV[b + 2]),
    burst = tonumber(ARGV[b + 3]),
    period = tonumber(ARGV[b + 4]),
    interval = tonumber(ARGV[b + 5]),
    tau = tonumber(ARGV[b + 6]),
  }
  local algorithm = algorithms[tonumber(ARGV[b + 1])]
  if not algorithm then
    return redis.error_reply('rate-limit: unknown algorithm code ' .. tostring(ARGV[b + 1]))
  end
  return algorithm(KEYS[i], now, p, cost, charge)
end

-- All or nothing: decide every limit without charging, then charge only if all allow.
local raws = {}
local all = true
local single = #KEYS == 1
for i = 1, #KEYS do
  raws[i] = run(i, commit and single)
  if raws[i].err then
    return raws[i]
  end
  all = all and raws[i][1]
end
if all and commit and not single then
  for i = 1, #KEYS do
    raws[i] = run(i, true)
  end
end

local out = {}
for i = 1, #KEYS do
  local r = raws[i]
  local allowed = 0
  if r[1] then
    allowed = 1
  end
  out[#out + 1] = allowed
  for j = 2, 5 do
    out[#out + 1] = r[j]
  end
end
return out
