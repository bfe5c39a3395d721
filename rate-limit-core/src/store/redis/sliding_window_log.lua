-- Sliding window log: the twin of algorithm/sliding_window_log.rs.
--
-- State: a list, oldest first, of "tick:cost:cumulative" entries, where cumulative is the sum
-- of the costs pushed since the list was created. Admissions at the same tick share an entry,
-- so the list holds at most `limit` entries, and the cost in the window is
-- `last.cumulative - (first.cumulative - first.cost)`, read from the two ends.
local function log_entry(text)
  local t, c, cum = string.match(text, '^(%d+):(%d+):(%d+)$')
  return tonumber(t), tonumber(c), tonumber(cum)
end

local function sliding_window_log(key, now, p, cost, commit)
  local n = redis.call('LLEN', key)
  local last_t, last_c, last_cum
  if n > 0 then
    last_t, last_c, last_cum = log_entry(redis.call('LINDEX', key, -1))
    -- A clock that goes back is treated as standing still.
    now = math.max(now, last_t)
  end
  -- Drop entries older than one period (tidying never changes a later decision).
  local expired, first_c, first_cum = 0, 0, 0
  while expired < n do
    local t, c, cum = log_entry(redis.call('LINDEX', key, expired))
    if t + p.period > now then
      first_c, first_cum = c, cum
      break
    end
    expired = expired + 1
  end
  if expired > 0 then
    redis.call('LTRIM', key, expired, -1)
  end
  local live = expired < n
  local used = 0
  if live then
    used = last_cum - (first_cum - first_c)
  end
  local allowed = used + cost <= p.limit
  local retry = -1
  if not allowed and cost <= p.limit then
    -- Walk from the oldest entry until enough cost has expired.
    local to_free = used + cost - p.limit
    local base = first_cum - first_c
    local at = now
    for _, text in ipairs(redis.call('LRANGE', key, 0, -1)) do
      local t, _, cum = log_entry(text)
      at = t + p.period
      if cum - base >= to_free then
        break
      end
    end
    retry = at - now
  end
  local newest = nil
  if live then
    newest = last_t
  end
  if allowed and commit then
    if live and last_t == now then
      redis.call('LSET', key, -1,
        string.format('%d:%d:%d', now, last_c + cost, last_cum + cost))
    else
      local cum = cost
      if live then
        cum = last_cum + cost
      end
      redis.call('RPUSH', key, string.format('%d:%d:%d', now, cost, cum))
    end
    used = used + cost
    newest = now
    redis.call('PEXPIRE', key, ttl_ms(p.period))
  end
  local reset = 0
  if newest then
    reset = newest + p.period - now
  end
  return allowed, p.limit, p.limit - math.min(used, p.limit), reset, retry
end
