-- wrk load for `make bench`. The API key comes in BENCH_API_KEY (never on a command line).
-- Arguments (after --):
--   append BOOKINGS N RUN   price changes of BENCH-0 .. BENCH-(BOOKINGS-1), and every Nth request
--                           (0 = none) a new booking NEW-RUN-...; RUN keeps created codes unique
--   get PATH                GET one path over and over
-- BENCH_PERSONAL=every puts a made-up traveller under data.personal in every append (the ledger seals
-- it), BENCH_PERSONAL=creates in the appends that create a booking only.
-- Prints one JSON object when done.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  headers = { ["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY") }
  if mode == "get" then
    path = args[2]
    return
  end
  bookings, create_every, run = tonumber(args[2]), tonumber(args[3]), args[4]
  math.randomseed(os.time() * 100 + tid)
  counter = 0
  headers["Content-Type"] = "application/json"
  append_body = '{"events":[{"type":"PriceChanged","price":{"amount":"123.45","currency":"EUR"},"data":{"reason":"bench"}}]}'
  create_body = '{"expected_version":0,"events":[{"type":"BookingPriced","price":{"amount":"99.90","currency":"EUR"}}]}'
  local personal = os.getenv("BENCH_PERSONAL")
  local traveller = '"personal":{"name":"Bench Traveller","email":"traveller@example.org"}'
  if personal == "every" then
    append_body = '{"events":[{"type":"PriceChanged","price":{"amount":"123.45","currency":"EUR"},' ..
                  '"data":{"reason":"bench",' .. traveller .. '}}]}'
  end
  if personal == "every" or personal == "creates" then
    create_body = '{"expected_version":0,"events":[{"type":"BookingPriced","price":{"amount":"99.90",' ..
                  '"currency":"EUR"},"data":{' .. traveller .. '}}]}'
  end
end

function request()
  if mode == "get" then
    return wrk.format("GET", path, headers)
  end
  counter = counter + 1
  if create_every > 0 and counter % create_every == 0 then
    return wrk.format("POST", "/v1/bookings/NEW-" .. run .. "-" .. tid .. "-" .. counter .. "/events", headers, create_body)
  end
  return wrk.format("POST", "/v1/bookings/BENCH-" .. math.random(0, bookings - 1) .. "/events", headers, append_body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
