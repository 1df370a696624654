-- Convoso-style form POST: the token sits in a 1 KB urlencoded body.
local token = os.getenv("BENCH_TOKEN")
local fields = "list_id=5&first_name=Ann&last_name=Example&phone_number=5550100&auth_token=" .. token
local pad = 1024 - #fields - #"&notes="
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = fields .. "&notes=" .. string.rep("x", pad)
