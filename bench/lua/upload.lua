-- 10 MiB request bodies, streamed through untouched (not a form, so the gateway never buffers them).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.body = string.rep("0123456789abcdef", 10 * 1024 * 1024 / 16)
