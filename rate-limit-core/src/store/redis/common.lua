-- Shared helpers of the rate-limit script. Time and spans are in integer ticks of one
-- microsecond. Every value stays below 2^53, where Lua numbers (doubles) are exact, and every
-- division is floored, so the arithmetic is the integer arithmetic of the Rust transitions.

-- Reads a state stored as integers joined by ':'. Returns the integers and the stored text,
-- or nil when the key does not exist.
local function load_fields(key)
  local text = redis.call('GET', key)
  if not text then
    return nil, nil
  end
  local fields = {}
  for n in string.gmatch(text, '%d+') do
    fields[#fields + 1] = tonumber(n)
  end
  return fields, text
end

-- Milliseconds for PEXPIRE from ticks: rounded up, at least 1, so a key outlives its state.
local function ttl_ms(ticks)
  return string.format('%d', math.max(1, math.ceil(ticks / 1000)))
end

-- Writes back the state a transition left, as the Rust transitions assign `*state`: nil (the
-- state is full again) deletes the key; otherwise the integers, joined by ':', live for `ttl`
-- ticks, the time until the state is full again. A state equal to the stored text is not
-- rewritten: its expiry is already right. Numbers are formatted with %d, since Lua's default
-- formatting keeps only 14 significant digits.
local function save_fields(key, old, fields, ttl)
  if not fields then
    if old then
      redis.call('DEL', key)
    end
    return
  end
  local parts = {}
  for i, n in ipairs(fields) do
    parts[i] = string.format('%d', n)
  end
  local text = table.concat(parts, ':')
  if text ~= old then
    redis.call('SET', key, text, 'PX', ttl_ms(ttl))
  end
end
