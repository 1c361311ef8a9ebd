-- wrk script: POST /v1/ledger/transfers with unique transfer ids and Idempotency-Keys.
-- args: <api key> <run prefix> <accounts> <batch size> <hot account id or "-">
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  key = args[1]
  prefix = args[2]
  accounts = tonumber(args[3])
  batch = tonumber(args[4])
  hot = args[5]
  counter = 0
  math.randomseed(os.time() + tid * 7919)
end

local function account(n)
  return "acc-" .. n
end

request = function()
  counter = counter + 1
  local parts = {}
  for i = 1, batch do
    local d = math.random(accounts)
    local c = math.random(accounts - 1)
    if c >= d then c = c + 1 end
    local debit = account(d)
    if hot ~= "-" then debit = hot end
    parts[i] = string.format(
      '{"id":"%s-%d-%d-%d","debit_account_id":"%s","credit_account_id":"%s","amount":1,' ..
      '"currency":"USD","code":"bench"}',
      prefix, tid, counter, i, debit, account(c))
  end
  local body = '{"transfers":[' .. table.concat(parts, ",") .. ']}'
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key,
    ["Idempotency-Key"] = string.format("%s-%d-%d", prefix, tid, counter),
  }
  return wrk.format("POST", "/v1/ledger/transfers", headers, body)
end
