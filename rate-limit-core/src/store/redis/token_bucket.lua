-- Token bucket: the twin of algorithm/token_bucket.rs. State "tokens:last".
local function token_bucket(key, now, p, cost, commit)
  local s = load_fields(key)
  local tokens, last
  if not s then
    tokens, last = p.burst, now
  else
    local add = math.floor(math.max(now - s[2], 0) / p.interval)
    tokens = math.min(s[1] + add, p.burst)
    if tokens == p.burst then
      last = now
    else
      last = s[2] + add * p.interval
    end
  end
  local allowed = cost <= tokens
  local retry = -1
  if not allowed and cost <= p.burst then
    retry = last + (cost - tokens) * p.interval - now
  end
  if allowed and commit then
    tokens = tokens - cost
  end
  local reset = math.max(last + (p.burst - tokens) * p.interval - now, 0)
  local state = nil
  if tokens < p.burst then
    state = { tokens, last }
  end
  save_fields(key, state, reset)
  return allowed, p.burst, tokens, reset, retry
end
