-- Shared helpers of the rate-limit script. Time and spans are in integer ticks of one
-- microsecond. Every value stays below 2^53, where Lua numbers (doubles) are exact, and every
-- division is floored, so the arithmetic is the integer arithmetic of the Rust transitions.

-- Reads a state stored as integers joined by ':'; nil when the key does not exist.
local function load_fields(key)
  local v = redis.call('GET', key)
  if not v then
    return nil
  end
  local fields = {}
  for n in string.gmatch(v, '%d+') do
    fields[#fields + 1] = tonumber(n)
  end
  return fields
end

-- Milliseconds for PEXPIRE from ticks: rounded up, at least 1, so a key outlives its state.
local function ttl_ms(ticks)
  return string.format('%d', math.max(1, math.ceil(ticks / 1000)))
end

-- Stores integers joined by ':' with a time to live of `ttl` ticks. Numbers are formatted with
-- %d: Lua's default formatting would round them to 14 significant digits.
local function store_fields(key, fields, ttl)
  local text = {}
  for i, n in ipairs(fields) do
    text[i] = string.format('%d', n)
  end
  redis.call('SET', key, table.concat(text, ':'), 'PX', ttl_ms(ttl))
end
