-- wrk script for bench/ingest.py: send pre-built raw HTTP requests, each once (the bench signs each channel
-- request and gives each event its own id, so none is a duplicate). $BENCH_REQUESTS_FILE holds the requests
-- separated by "\30\30\30"; thread n of $BENCH_THREADS takes every n-th one. Prints one JSON line at the end.
local separator = "\30\30\30"
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local file = assert(io.open(os.getenv("BENCH_REQUESTS_FILE"), "rb"))
  local data = file:read("*a")
  file:close()
  local threads = tonumber(os.getenv("BENCH_THREADS"))
  requests_, position, n, start = {}, 0, 0, 1
  while true do
    local at = string.find(data, separator, start, true)
    if not at then break end
    if n % threads == id then
      requests_[#requests_ + 1] = string.sub(data, start, at - 1)
    end
    n = n + 1
    start = at + #separator
  end
end

function request()
  position = position + 1
  if position > #requests_ then position = 1 end  -- past the end: repeats (the bench counts the answers)
  return requests_[position]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
