-- GCRA: the twin of algorithm/gcra.rs. State "tat".

-- Whole units of cost free at `now` when the theoretical arrival time is `at`.
local function gcra_remaining(now, p, at)
  return math.floor(math.max(now + p.tau - at, 0) / p.interval)
end

local function gcra(key, now, p, cost, commit)
  local s = load_fields(key)
  local tat = now
  if s then
    tat = math.max(s[1], now)
  end
  if tat <= now then
    -- Full again: the state is dropped, whatever follows.
    save_fields(key, nil, 0)
  end
  if cost > p.burst then
    return false, p.burst, gcra_remaining(now, p, tat), tat - now, -1
  end
  local new_tat = tat + cost * p.interval
  local allow_at = math.max(new_tat - p.tau, 0)
  if allow_at <= now then
    if commit then
      tat = new_tat
      save_fields(key, { tat }, tat - now)
    end
    return true, p.burst, gcra_remaining(now, p, tat), tat - now, -1
  end
  return false, p.burst, gcra_remaining(now, p, tat), tat - now, allow_at - now
end
