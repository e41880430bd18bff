"""Stable reason codes.

A code's number and name never change once released: apps, receipts stored on
chain and auditors' reports depend on them. New codes are appended.
"""

from enum import IntEnum


class Code(IntEnum):
    OK = 0

    # The transaction itself is unacceptable; it never enters a block.
    MALFORMED = 1
    WRONG_CHAIN = 2
    BAD_SIGNATURE = 3
    EXPIRED = 4
    EXPIRY_TOO_FAR = 5
    DUPLICATE_TX = 6
    UNSUPPORTED_VERSION = 7
    UNKNOWN_KIND = 8

    # Refused by the ledger; recorded in a block with this code, changes nothing.
    UNAUTHORISED = 20
    UNKNOWN_MERCHANT = 21
    MERCHANT_SUSPENDED = 22
    MERCHANT_EXISTS = 23
    ACCOUNT_FROZEN = 24
    INSUFFICIENT_BALANCE = 25
    DUPLICATE_ORDER = 26
    AMOUNT_OUT_OF_RANGE = 27
    DAILY_CAP_EXCEEDED = 28
    TRANSFERS_DISABLED = 29
    INVALID_RECIPIENT = 30
    BALANCE_LIMIT = 31
    INVALID_EVIDENCE = 32
    EVIDENCE_EXISTS = 33
    ALREADY_VOTED = 34
    INVALID_VALIDATOR_CHANGE = 35
    VALIDATOR_SET_LIMIT = 36

    # The loyalty program (docs/loyalty.md).
    UNKNOWN_PROPOSAL = 37
    PROPOSAL_EXPIRED = 38
    DUPLICATE_APPROVAL = 39
    APPROVAL_REQUIRED = 40
    INVALID_PROGRAM_CHANGE = 41
    TOO_MANY_PROPOSALS = 42
    UNKNOWN_ORDER = 43
    REFUND_EXCEEDS_ORDER = 44
    CUSTOMER_DAILY_CAP_EXCEEDED = 45
    VELOCITY_LIMIT_EXCEEDED = 46
    TRANSFER_LIMIT_EXCEEDED = 47
    ENGAGEMENT_NOT_OFFERED = 48
    ENGAGEMENT_CAP_EXCEEDED = 49
    DUPLICATE_REFERENCE = 50
    UNKNOWN_REDEMPTION = 51
    NOT_REDEEMING_MERCHANT = 52
    REDEMPTION_ALREADY_REVERSED = 53

    @property
    def slug(self) -> str:
        """The lower-case name used in API problem responses and logs."""
        return self.name.lower()


# Codes that make a transaction unfit for any block; the others are outcomes.
ADMISSION_CODES = frozenset(
    {
        Code.MALFORMED,
        Code.WRONG_CHAIN,
        Code.BAD_SIGNATURE,
        Code.EXPIRED,
        Code.EXPIRY_TOO_FAR,
        Code.DUPLICATE_TX,
        Code.UNSUPPORTED_VERSION,
        Code.UNKNOWN_KIND,
        Code.AMOUNT_OUT_OF_RANGE,
    }
)
