"""httpbin: the aiohttp service, via web.run_app (python -m services.httpbin) or aiohttp.GunicornWebWorker."""
