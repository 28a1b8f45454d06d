// The conformance scenario, on the client oapi-codegen makes from the API's OpenAPI document (package
// ledger, generated beside this file): create a booking, a colliding create by another department, an
// append at a stale version, a read-back, the price as of a moment. Settings come from the environment
// (tests/e2e/test_generated_clients.py); any difference from the contract ends the run with exit 1.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"booking-ledger/clients/go/ledger"
)

func check(condition bool, what string) {
	if !condition {
		fmt.Fprintln(os.Stderr, "not as the contract says:", what)
		os.Exit(1)
	}
}

// client is the generated client for one API key: `Authorization: Bearer <key>` on every request.
func client(url, key string) *ledger.ClientWithResponses {
	c, err := ledger.NewClientWithResponses(url, ledger.WithRequestEditorFn(
		func(_ context.Context, req *http.Request) error {
			req.Header.Set("Authorization", "Bearer "+key)
			return nil
		}))
	if err != nil {
		panic(err)
	}
	return c
}

func ptr[T any](v T) *T { return &v }

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func main() {
	ctx := context.Background()
	code, owner := os.Getenv("LEDGER_CODE"), os.Getenv("LEDGER_OWNER")
	hotel := client(os.Getenv("LEDGER_URL"), os.Getenv("LEDGER_KEY"))
	car := client(os.Getenv("LEDGER_URL"), os.Getenv("LEDGER_OTHER_KEY"))
	at := func(s string) *time.Time { return ptr(must(time.Parse(time.RFC3339, s))) }

	// Create the booking: expected_version 0; the key's department becomes its owner.
	created := must(hotel.AppendEventsWithResponse(ctx, code, ledger.AppendIn{ExpectedVersion: ptr(0),
		Events: []ledger.EventIn{{Type: "BookingPriced", OccurredAt: at("2026-11-26T10:00:00Z"),
			Price: &ledger.PriceIn{Amount: "120.00", Currency: ledger.EUR}}}}))
	check(created.JSON201 != nil && created.JSON201.Version == 1, "created at version 1")

	// Another department's create of the same code: 409 booking_code_taken, naming the owner.
	taken := must(car.AppendEventsWithResponse(ctx, code, ledger.AppendIn{ExpectedVersion: ptr(0),
		Events: []ledger.EventIn{{Type: "BookingPriced"}}}))
	problem := taken.ApplicationproblemJSON409
	check(problem != nil && problem.Code == ledger.BookingCodeTaken, "409 booking_code_taken")
	check(problem.Department != nil && *problem.Department == owner, "the problem names the owner")

	// Append at version 1, then again at the now stale version 1: 409 version_conflict.
	changed := must(hotel.AppendEventsWithResponse(ctx, code, ledger.AppendIn{ExpectedVersion: ptr(1),
		Events: []ledger.EventIn{{Type: "PriceChanged", OccurredAt: at("2026-11-26T11:00:00Z"),
			Price: &ledger.PriceIn{Amount: "99.50", Currency: ledger.EUR}}}}))
	check(changed.JSON201 != nil && changed.JSON201.Version == 2, "appended at version 2")
	stale := must(hotel.AppendEventsWithResponse(ctx, code, ledger.AppendIn{ExpectedVersion: ptr(1),
		Events: []ledger.EventIn{{Type: "PriceChanged"}}}))
	problem = stale.ApplicationproblemJSON409
	check(problem != nil && problem.Code == ledger.VersionConflict, "409 version_conflict")
	check(problem.CurrentVersion != nil && *problem.CurrentVersion == 2, "the problem gives the current version")

	// Read it back, with any department's read key.
	booking := must(car.GetBookingWithResponse(ctx, code)).JSON200
	check(booking != nil && booking.Version == 2 && booking.Department == owner &&
		booking.Price != nil && booking.Price.Amount == "99.50", "read-back")

	// The price in force at 10:30 business time: the create's.
	then := must(car.GetPriceWithResponse(ctx, code, &ledger.GetPriceParams{
		At: at("2026-11-26T10:30:00Z"), Clock: ptr(ledger.Occurred)})).JSON200
	check(then != nil && then.Price != nil && then.Price.Amount == "120.00" &&
		then.Version != nil && *then.Version == 1, "price as of 10:30")
	fmt.Println("go conformance: ok")
}
