-- wrk script for the serving benchmark: every request asks for a different user, as the project's load generator
-- does. Usage: PATHS=paths.txt wrk -t1 -c8 -d15s --latency -s bench/wrk_recommend.lua http://127.0.0.1:8000
-- PATHS holds one request path per line ("/recommend/<user>?k=10"); each thread starts at its own offset.
local paths = {}
local n = 0
local counter = 0

function init(args)
  local file = assert(io.open(os.getenv("PATHS") or "paths.txt", "r"))
  for line in file:lines() do
    if #line > 0 then
      n = n + 1
      paths[n] = line
    end
  end
  file:close()
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
  counter = math.random(n)
end

function request()
  counter = counter % n + 1
  return wrk.format("GET", paths[counter])
end

-- One JSON line at the end, for bench/serving.py: requests, errors, seconds and latency percentiles (ms).
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
    + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "errors": %d, "seconds": %.3f, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "p999_ms": %.3f}\n',
    summary.requests, errors, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
