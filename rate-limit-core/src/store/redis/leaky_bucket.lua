-- Leaky bucket as a meter: the twin of algorithm/leaky_bucket.rs. State "level:at".
local function leaky_bucket(key, now, p, cost, commit)
  local s = load_fields(key)
  local level = 0
  if s then
    now = math.max(now, s[2])
    level = math.max(s[1] - (now - s[2]), 0)
  end
  -- Only read when cost <= burst, where cost * interval <= tau is exact.
  local poured = level + cost * p.interval
  local allowed = cost <= p.burst and poured <= p.tau
  local retry = -1
  if not allowed and cost <= p.burst then
    retry = poured - p.tau
  end
  if allowed and commit then
    level = poured
  end
  local state = nil
  if level > 0 then
    state = { level, now }
  end
  save_fields(key, state, level)
  local room = math.floor((p.tau - math.min(level, p.tau)) / p.interval)
  return allowed, p.burst, room, level, retry
end
