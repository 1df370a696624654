-- A flood of invalid tokens: a pool of BENCH_POOL random ones, picked at random, so each distinct token
-- repeats and the negative cache decides how often SQLite is asked.
local pool_size = tonumber(os.getenv("BENCH_POOL") or "10000")
local path = os.getenv("BENCH_PATH") or "/v1/leads/search"
local pool = {}
local hex = "0123456789abcdef"

-- Built in init: wrk.format needs the Host header, which wrk sets up only then.
init = function(args)
   math.randomseed(20240601)
   for i = 1, pool_size do
      local t = {}
      for j = 1, 32 do
         local k = math.random(1, 16)
         t[j] = hex:sub(k, k)
      end
      pool[i] = wrk.format("GET", path .. "?auth_token=gwt_invalid_" .. table.concat(t))
   end
end
request = function()
   return pool[math.random(1, pool_size)]
end
