-- wrk script: every request is a new Alohub event. Each call gets two events (the mid-call one,
-- then the final one), so alohook does its full work: dedupe, store, create then merge a call.
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function init(args)
  n = 0
  key = os.getenv("ALOHOOK_BENCH_KEY") or "bench-key"
end

local mid = '{"call_id":"wrk-%d-%d","call_status":"answered","direction":"inbound",' ..
  '"caller_number":"0389%06d","destination_number":"%d","starttime":"2024-01-13 15:00:30",' ..
  '"answertime":"2024-01-13 15:00:35","endtime":"","hangup_by":"","hotline":"19001234",' ..
  '"total_duration":"","holding_duration":"","recording_url":"","objectId":1,' ..
  '"transactionID":"","userName":"agent%d","eventType":"call"}'
local final = '{"call_id":"wrk-%d-%d","call_status":"answered","direction":"inbound",' ..
  '"caller_number":"0389%06d","destination_number":"%d","starttime":"2024-01-13 15:00:30",' ..
  '"answertime":"2024-01-13 15:00:35","endtime":"2024-01-13 15:05:30","hangup_by":"customer",' ..
  '"hotline":"19001234","total_duration":"300","holding_duration":"0",' ..
  '"recording_url":"https://media.example.invalid/r.mp3","objectId":1,' ..
  '"transactionID":"","userName":"agent%d","eventType":"call"}'

function request()
  n = n + 1
  local call = math.floor(n / 2)
  local template = (n % 2 == 0) and mid or final
  local body = string.format(template, tid, call, call % 1000000, 100 + call % 50, call % 50)
  return wrk.format("POST", "/webhooks/alohub",
    { ["Authorization"] = key, ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors_status=%d duration_s=%.3f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
    summary.requests, summary.errors.status, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
