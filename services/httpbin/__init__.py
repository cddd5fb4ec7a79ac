"""httpbin: the aiohttp service, on aiohttp's AppRunner (python -m services.httpbin) or aiohttp.GunicornWebWorker."""
