-- wrk load for `make bench`: GET one path over and over. The API key comes in BENCH_API_KEY; the path is the argument after --.
function init(args)
  path = args[1]
  headers = { ["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY") }
end

function request()
  return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
