-- Fixed window aligned to the epoch: the twin of algorithm/fixed_window.rs. State "start:count".
local function fixed_window(key, now, p, cost, commit)
  local start = now - now % p.period
  local stop = start + p.period
  local s = load_fields(key)
  local count = 0
  if s then
    if s[1] == start then
      count = s[2]
    elseif s[1] > start then
      -- A clock that went back into an older window keeps the newer window's count.
      local wait = s[1] + p.period - now
      local retry = -1
      if cost <= p.limit then
        retry = wait
      end
      return false, p.limit, p.limit - math.min(s[2], p.limit), wait, retry
    end
  end
  local allowed = count + cost <= p.limit
  local retry = -1
  if not allowed and cost <= p.limit then
    retry = stop - now
  end
  if allowed and commit then
    count = count + cost
  end
  local reset = 0
  local state = nil
  if count > 0 then
    reset = stop - now
    state = { start, count }
  end
  save_fields(key, state, reset)
  return allowed, p.limit, p.limit - count, reset, retry
end
