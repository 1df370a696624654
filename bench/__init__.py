"""The benchmark suite (`make bench`): the gateway beside the upstream, nginx and aiohttp, under wrk."""
