-- Leaky bucket as a meter: the twin of algorithm/leaky_bucket.rs. State "level:at".
local function leaky_bucket(key, now, p, cost, commit)
  local s = load_fields(key)
  local level, at = 0, now
  if s then
    -- Nothing drains before the state's time; every wait adds the caller's lag behind it.
    at = math.max(now, s[2])
    level = math.max(s[1] - (at - s[2]), 0)
  end
  local lag = at - now
  -- Only read when cost <= burst, where cost * interval <= tau is exact.
  local poured = level + cost * p.interval
  local allowed = cost <= p.burst and poured <= p.tau
  local retry = -1
  if not allowed and cost <= p.burst then
    retry = poured - p.tau + lag
  end
  if allowed and commit then
    level = poured
  end
  local state = nil
  local reset = 0
  if level > 0 then
    state = { level, at }
    reset = level + lag
  end
  save_fields(key, state, reset)
  local room = math.floor((p.tau - math.min(level, p.tau)) / p.interval)
  return allowed, p.burst, room, reset, retry
end
