-- Valid tokens in rotation: BENCH_POOL distinct secrets spread over the 1,000,000-token store, in random order
-- (BENCH_SEQUENTIAL=1: in order, to fill the cache with as many distinct tokens as requests allow).
local pool_size = tonumber(os.getenv("BENCH_POOL") or "10000")
local stride = tonumber(os.getenv("BENCH_STRIDE") or "100")
local sequential = os.getenv("BENCH_SEQUENTIAL") == "1"
local pool = {}

-- Built in init: wrk.format needs the Host header, which wrk sets up only then.
init = function(args)
   for i = 1, pool_size do
      pool[i] = wrk.format("GET", string.format("/v1/leads/search?auth_token=bt-%07d", (i - 1) * stride))
   end
   math.randomseed(tonumber(os.getenv("BENCH_SEED") or os.time()))
end
-- BENCH_START: where a sequential pass resumes, so successive wrk runs keep presenting new tokens.
local n = tonumber(os.getenv("BENCH_START") or "0")
request = function()
   if sequential then
      n = n % pool_size + 1
      return pool[n]
   end
   return pool[math.random(1, pool_size)]
end
