// The conformance scenario, on the TypeScript types openapi-typescript makes from the API's OpenAPI
// document (ledger-api.ts, generated beside this file; types only) and openapi-fetch: create a booking, a colliding
// create by another department, an append at a stale version, a read-back, the price as of a moment.
// Settings come from the environment (tests/e2e/test_generated_clients.py); any difference from the
// contract ends the run with an error.
import createClient from "openapi-fetch";
import type { paths } from "./ledger-api.js";

declare const process: { env: Record<string, string | undefined> };

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`not as the contract says: ${what}`);
}

/** The client for one API key: `Authorization: Bearer <key>` on every request. */
function ledger(baseUrl: string, key: string) {
  return createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${key}` } });
}

const env = (name: string): string => process.env[name] ?? "";
const code = env("LEDGER_CODE");
const owner = env("LEDGER_OWNER");
const hotel = ledger(env("LEDGER_URL"), env("LEDGER_KEY"));
const car = ledger(env("LEDGER_URL"), env("LEDGER_OTHER_KEY"));
const path = { params: { path: { code } } };

// docs/api.md: begin
// Create the booking: expected_version 0; the key's department becomes its owner.
const created = await hotel.POST("/v1/bookings/{code}/events", { ...path, body: {
  expected_version: 0,
  events: [{ type: "BookingPriced", price: { amount: "120.00", currency: "EUR" },
             occurred_at: "2026-11-26T10:00:00Z" }],
} });
check(created.response.status === 201 && created.data?.version === 1, "created at version 1");

// Another department's create of the same code: 409 booking_code_taken, naming the owner.
const taken = await car.POST("/v1/bookings/{code}/events", { ...path, body: {
  expected_version: 0, events: [{ type: "BookingPriced" }],
} });
check(taken.response.status === 409 && taken.error?.code === "booking_code_taken", "409 booking_code_taken");
check(taken.error.department === owner, "the problem names the owner");

// Append at version 1, then again at the now stale version 1: 409 version_conflict.
const changed = await hotel.POST("/v1/bookings/{code}/events", { ...path, body: {
  expected_version: 1,
  events: [{ type: "PriceChanged", price: { amount: "99.50", currency: "EUR" },
             occurred_at: "2026-11-26T11:00:00Z" }],
} });
check(changed.data?.version === 2, "appended at version 2");
const stale = await hotel.POST("/v1/bookings/{code}/events", { ...path, body: {
  expected_version: 1, events: [{ type: "PriceChanged" }],
} });
check(stale.response.status === 409 && stale.error?.code === "version_conflict", "409 version_conflict");
check(stale.error.current_version === 2, "the problem gives the current version");

// Read it back, with any department's read key.
const booking = await car.GET("/v1/bookings/{code}", path);
check(booking.data?.version === 2 && booking.data.department === owner
      && booking.data.price?.amount === "99.50", "read-back");

// The price in force at 10:30 business time: the create's.
const then = await car.GET("/v1/bookings/{code}/price", { params: {
  path: { code }, query: { at: "2026-11-26T10:30:00Z", clock: "occurred" },
} });
check(then.data?.price?.amount === "120.00" && then.data.version === 1, "price as of 10:30");
// docs/api.md: end
console.log("typescript conformance: ok");
