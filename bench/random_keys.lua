-- wrk script for bench/http.sh: every request carries X-Client-ID set to one of 10,000 keys
-- ("0" to "9999"), picked at random. The 10,000 requests are formatted once at start-up so
-- that wrk spends as little as possible per request.

local requests = {}

init = function(args)
  math.randomseed(os.time())
  for i = 0, 9999 do
    requests[i] = wrk.format("GET", "/", { ["X-Client-ID"] = tostring(i) })
  end
end

request = function()
  return requests[math.random(0, 9999)]
end
