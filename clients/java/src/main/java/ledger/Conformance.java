package ledger;

import java.time.OffsetDateTime;
import java.util.List;

import ledger.client.ApiClient;
import ledger.client.ApiException;
import ledger.client.api.DefaultApi;
import ledger.client.model.AppendIn;
import ledger.client.model.AppendOut;
import ledger.client.model.Booking;
import ledger.client.model.Clock;
import ledger.client.model.Currency;
import ledger.client.model.EventIn;
import ledger.client.model.PriceIn;
import ledger.client.model.PriceInForce;
import ledger.client.model.Problem;
import ledger.client.model.ProblemCode;

/**
 * The conformance scenario, on the client openapi-generator makes from the API's OpenAPI document:
 * create a booking, a colliding create by another department, an append at a stale version, a
 * read-back, the price as of a moment. Settings come from the environment (see pom.xml); any
 * difference from the contract ends the run with an exception.
 */
public final class Conformance {
    public static void main(String[] args) throws Exception {
        String url = System.getenv("LEDGER_URL");
        String code = System.getenv("LEDGER_CODE");
        String owner = System.getenv("LEDGER_OWNER");
        DefaultApi hotel = api(url, System.getenv("LEDGER_KEY"));
        DefaultApi car = api(url, System.getenv("LEDGER_OTHER_KEY"));

        // docs/api.md: begin
        // Create the booking: expected_version 0; the key's department becomes its owner.
        AppendOut created = hotel.appendEvents(code, new AppendIn().expectedVersion(0).events(List.of(
            new EventIn().type("BookingPriced")
                .price(new PriceIn().amount("120.00").currency(Currency.EUR))
                .occurredAt(OffsetDateTime.parse("2026-11-26T10:00:00Z")))));
        check(created.getVersion() == 1, "created at version 1");

        // Another department's create of the same code: 409 booking_code_taken, naming the owner.
        try {
            car.appendEvents(code, new AppendIn().expectedVersion(0).events(List.of(
                new EventIn().type("BookingPriced"))));
            throw new AssertionError("a taken code was created again");
        } catch (ApiException e) {
            Problem problem = problemOf(e);
            check(e.getCode() == 409 && problem.getCode() == ProblemCode.BOOKING_CODE_TAKEN,
                  "409 booking_code_taken");
            check(owner.equals(problem.getDepartment()), "the problem names the owner");
        }

        // Append at version 1, then again at the now stale version 1: 409 version_conflict.
        EventIn change = new EventIn().type("PriceChanged")
            .price(new PriceIn().amount("99.50").currency(Currency.EUR))
            .occurredAt(OffsetDateTime.parse("2026-11-26T11:00:00Z"));
        check(hotel.appendEvents(code, new AppendIn().expectedVersion(1).events(List.of(change)))
                  .getVersion() == 2, "appended at version 2");
        try {
            hotel.appendEvents(code, new AppendIn().expectedVersion(1).events(List.of(
                new EventIn().type("PriceChanged"))));
            throw new AssertionError("an append at a stale version was accepted");
        } catch (ApiException e) {
            Problem problem = problemOf(e);
            check(e.getCode() == 409 && problem.getCode() == ProblemCode.VERSION_CONFLICT,
                  "409 version_conflict");
            check(problem.getCurrentVersion() == 2, "the problem gives the current version");
        }

        // Read it back, with any department's read key.
        Booking booking = car.getBooking(code);
        check(booking.getVersion() == 2 && owner.equals(booking.getDepartment())
              && "99.50".equals(booking.getPrice().getAmount()), "read-back");

        // The price in force at 10:30 business time: the create's.
        PriceInForce then = car.getPrice(code, OffsetDateTime.parse("2026-11-26T10:30:00Z"), Clock.OCCURRED, null);
        check("120.00".equals(then.getPrice().getAmount()) && then.getVersion() == 1, "price as of 10:30");
        // docs/api.md: end
        System.out.println("java conformance: ok");
    }

    /** The generated client for one API key: `Authorization: Bearer <key>` on every request. */
    static DefaultApi api(String url, String key) {
        ApiClient client = new ApiClient();
        client.updateBaseUri(url);
        client.setRequestInterceptor(request -> request.header("Authorization", "Bearer " + key));
        return new DefaultApi(client);
    }

    /** The problem+json body of an error answer, as the generated Problem type. */
    static Problem problemOf(ApiException e) throws Exception {
        return new ApiClient().getObjectMapper().readValue(e.getResponseBody(), Problem.class);
    }

    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError("not as the contract says: " + what);
        }
    }
}
