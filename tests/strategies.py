"""Hypothesis strategies shared by the whole test suite, one delimited section per domain.

Add a new section for a new domain rather than editing another's; keep each section's helpers
private to it (prefix them with the section name or ``_``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import strategies as st

from hammerlock.ledger.model import AccountFlag as _AccountFlag
from hammerlock.ledger.model import AccountInput as _AccountInput
from hammerlock.ledger.model import TransferFlag as _TransferFlag
from hammerlock.ledger.model import TransferInput as _TransferInput
from hammerlock.money import ISO_4217_EXPONENTS, MAX_API_AMOUNT, Money, Rounding
from hammerlock.risk.model import CountryMismatchRule as _CountryMismatchRule
from hammerlock.risk.model import NewCustomerRule as _NewCustomerRule
from hammerlock.risk.model import RiskInput as _RiskInput
from hammerlock.risk.model import RiskRules as _RiskRules
from hammerlock.risk.model import VelocityRule as _VelocityRule

# ================================================================================================
# SECTION money: strategies for hammerlock.money
# ================================================================================================

CURRENCY_CODES = sorted(ISO_4217_EXPONENTS)


def currency_codes() -> st.SearchStrategy[str]:
    """Generate any code in the ISO 4217 table."""
    return st.sampled_from(CURRENCY_CODES)


def unknown_currency_codes() -> st.SearchStrategy[str]:
    """Generate strings outside the table: lowercase, mixed case, wrong length, non-ASCII."""
    return st.text(max_size=6).filter(lambda code: code not in ISO_4217_EXPONENTS)


def roundings() -> st.SearchStrategy[Rounding]:
    return st.sampled_from(Rounding)


def money(
    currency: str | None = None,
    *,
    min_minor: int = -MAX_API_AMOUNT,
    max_minor: int = MAX_API_AMOUNT,
) -> st.SearchStrategy[Money]:
    """Generate amounts in one ``currency`` (any if ``None``), signed, within the API range."""
    codes = currency_codes() if currency is None else st.just(currency)
    return st.builds(Money, st.integers(min_minor, max_minor), codes)


def api_money(currency: str | None = None) -> st.SearchStrategy[Money]:
    """Generate amounts that may cross the API: 0 to ``MAX_API_AMOUNT`` minor units."""
    return money(currency, min_minor=0)


@st.composite
def same_currency_money(draw: st.DrawFn, count: int) -> list[Money]:
    """Generate ``count`` signed amounts that share one currency."""
    currency = draw(currency_codes())
    return [draw(money(currency)) for _ in range(count)]


def allocation_weights(max_size: int = 50) -> st.SearchStrategy[list[int]]:
    """Generate lists of non-negative weights with a positive sum, zeros included on purpose."""
    weight = st.one_of(st.just(0), st.integers(1, 10), st.integers(0, 10**9))
    return st.lists(weight, min_size=1, max_size=max_size).filter(lambda ws: sum(ws) > 0)


def basis_points() -> st.SearchStrategy[int]:
    """Generate 0% to 100% in basis points, with the edges drawn often."""
    return st.one_of(st.sampled_from([0, 1, 9_999, 10_000]), st.integers(0, 10_000))


# ================================================================================================
# SECTION security.pan: strategies for hammerlock.security.pan
# ================================================================================================

# (brand, prefixes, lengths). Written out independently of pan.py's table, and narrowed so that
# a generated number cannot fall into a more specific brand's range (e.g. Maestro's 56-69 and
# UnionPay's 62 both contain Discover ranges, so those prefixes avoid them).
_PAN_BRANDS: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = (
    ("visa", ("4",), (13, 16, 19)),
    ("mastercard", ("51", "52", "53", "54", "55", "2221", "2500", "2720"), (16,)),
    ("amex", ("34", "37"), (15,)),
    ("discover", ("6011", "622126", "622500", "622925", "644", "649", "65"), (16, 17, 18, 19)),
    ("jcb", ("3528", "3550", "3589"), (16, 17, 18, 19)),
    ("diners", ("300", "305", "36", "38", "39"), (14, 15, 16, 17, 18, 19)),
    ("unionpay", ("620", "621", "623", "628", "629"), (16, 17, 18, 19)),
    ("maestro", ("50", "56", "57", "58", "63", "67"), tuple(range(12, 20))),
    ("mir", ("2200", "2204"), (16, 17, 18, 19)),
)

PAN_BRANDS = tuple(brand for brand, _, _ in _PAN_BRANDS)


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # digit -> digit sum of twice the digit


def luhn_check_digit(payload: str) -> str:
    """Return the digit that makes ``payload + digit`` pass the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(payload)):
        # Doubled positions are the even ones here, counted before the check digit is appended.
        total += _LUHN_DOUBLED[int(char)] if position % 2 == 0 else int(char)
    return str((10 - total % 10) % 10)


@st.composite
def branded_card_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """Generate ``(brand, pan)``: a known prefix, random digits and a correct Luhn check digit."""
    brand, prefixes, lengths = draw(st.sampled_from(_PAN_BRANDS))
    prefix = draw(st.sampled_from(prefixes))
    length = draw(st.sampled_from(lengths))
    body_len = length - 1 - len(prefix)
    payload = prefix + draw(st.text("0123456789", min_size=body_len, max_size=body_len))
    return brand, payload + luhn_check_digit(payload)


def card_numbers() -> st.SearchStrategy[str]:
    """Generate valid, branded, Luhn-correct card numbers (digits only)."""
    return branded_card_numbers().map(lambda pair: pair[1])


@st.composite
def separated_card_numbers(draw: st.DrawFn) -> str:
    """Generate a card number split into groups by single spaces or dashes, as people type them."""
    digits = draw(card_numbers())
    cuts = draw(st.sets(st.integers(1, len(digits) - 1), max_size=len(digits) - 1))
    separators = draw(st.lists(st.sampled_from(" -"), min_size=len(cuts), max_size=len(cuts)))
    pieces: list[str] = []
    start = 0
    for cut, separator in zip(sorted(cuts), separators, strict=True):
        pieces += [digits[start:cut], separator]
        start = cut
    return "".join([*pieces, digits[start:]])


def text_without_digits() -> st.SearchStrategy[str]:
    """Generate text without ASCII digits (other Unicode digits are not card digits)."""
    return st.text(st.characters(exclude_characters="0123456789"))


# ================================================================================================
# SECTION ledger: strategies for hammerlock.ledger (tests/integration/test_ledger_*.py)
# ================================================================================================
#
# Small amounts, few accounts and two currencies, so limits bite, holds collide and currencies
# mismatch often. Transfers are drawn against a ``LedgerScene`` (what exists so far), so most are
# plausible and a steady share are deliberately wrong (one rule broken at a time).

LEDGER_CURRENCIES = ("USD", "EUR")
LEDGER_METADATA = ("{}", '{"note":"a"}')
LEDGER_MAX_AMOUNT = 150
LEDGER_TIMEOUTS_S = (0, 1, 2, 3, 5, 10)
_LEDGER_LIMITS = (
    _AccountFlag(0),
    _AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS,
    _AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS,
)
_LEDGER_KINDS = (
    "plain",
    "fund",
    "pending",
    "post",
    "void",
    "balancing",
    "retry",
    "malformed",
    "pending",
    "post",
)
_LEDGER_MALFORMED = (
    "pending_and_post",
    "balancing_and_void",
    "same_accounts",
    "pending_id_on_plain",
    "post_without_pending_id",
    "timeout_on_plain",
    "zero_amount",
    "unknown_debit",
    "unknown_credit",
    "other_currency",
)
_LEDGER_MUTATIONS = (  # what a retry changes: mostly nothing (a true retry), else one field
    None,
    None,
    None,
    None,
    "flags",
    "pending_id",
    "timeout_s",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "currency",
    "code",
    "metadata",
)


@dataclass(frozen=True)
class LedgerScene:
    """What a drawn transfer may refer to: accounts ``(id, currency)``, unlimited accounts that
    fund the others, transfer ids worth posting or voiding, past sends, an id nothing uses."""

    accounts: tuple[tuple[str, str], ...]
    funders: tuple[str, ...] = ()
    pending_ids: tuple[str, ...] = ()
    sent: tuple[_TransferInput, ...] = ()
    missing: str = "no-such-id"


def ledger_amounts(max_amount: int = LEDGER_MAX_AMOUNT) -> st.SearchStrategy[int]:
    """Generate positive amounts, small so that limits bite, the edges drawn often."""
    return st.one_of(st.integers(1, max_amount), st.sampled_from([1, max_amount]))


@st.composite
def ledger_account_inputs(
    draw: st.DrawFn, account_id: str, *, currency: str | None = None
) -> _AccountInput:
    """Generate an account: any currency of ``LEDGER_CURRENCIES``, maybe a limit flag."""
    return _AccountInput(
        id=account_id,
        currency=currency or draw(st.sampled_from(LEDGER_CURRENCIES)),
        code=draw(st.sampled_from(("wallet", "escrow", "fees"))),
        flags=draw(st.sampled_from(_LEDGER_LIMITS)),
        metadata=draw(st.sampled_from(LEDGER_METADATA)),
    )


@st.composite
def ledger_account_variants(draw: st.DrawFn, account: _AccountInput) -> _AccountInput:
    """Generate a re-creation of ``account``: the same body, or one field changed."""
    field = draw(st.sampled_from((None, "currency", "code", "flags", "metadata")))
    if field == "currency":
        return replace(account, currency="EUR" if account.currency == "USD" else "USD")
    if field == "code":
        return replace(account, code=account.code + ".x")
    if field == "flags":
        return replace(account, flags=account.flags ^ _AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS)
    if field == "metadata":
        return replace(account, metadata='{"other":true}')
    return account


def _ledger_pair(draw: st.DrawFn, scene: LedgerScene, *, fund: bool) -> tuple[str, str, str]:
    """A debit and a different credit account of one currency (when the scene has two)."""
    funders = [a for a in scene.accounts if a[0] in scene.funders]
    debit, currency = draw(st.sampled_from(funders if fund and funders else scene.accounts))
    same = [a for a, c in scene.accounts if c == currency and a != debit] or [debit]
    return debit, draw(st.sampled_from(same)), currency


@st.composite
def ledger_transfers(draw: st.DrawFn, transfer_id: str, scene: LedgerScene) -> _TransferInput:
    """Generate one transfer against ``scene``: mostly plausible, sometimes wrong on purpose.

    Kinds: plain, funding (from an unlimited account), pending (a hold, maybe with a timeout),
    post and void of a known (or unknown) hold, partial or not, balancing, a retry of an earlier
    transfer (same body, or one field changed), and malformed ones (one rule of the result list
    broken each).
    """
    kind = draw(st.sampled_from(_LEDGER_KINDS))
    if kind == "retry" and scene.sent:
        return _ledger_retry(draw, scene)
    if kind in ("post", "void"):
        return _ledger_resolve(draw, transfer_id, scene, kind)
    debit, credit, currency = _ledger_pair(draw, scene, fund=kind == "fund")
    flags = _TransferFlag(0)
    timeout_s = 0
    if kind == "pending" or (kind == "balancing" and draw(st.booleans())):
        flags |= _TransferFlag.PENDING
        timeout_s = draw(st.sampled_from(LEDGER_TIMEOUTS_S))
    if kind == "balancing":
        flags |= draw(
            st.sampled_from(
                (
                    _TransferFlag.BALANCING_DEBIT,
                    _TransferFlag.BALANCING_CREDIT,
                    _TransferFlag.BALANCING_DEBIT | _TransferFlag.BALANCING_CREDIT,
                )
            )
        )
    transfer = _TransferInput(
        id=transfer_id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=draw(ledger_amounts()),
        currency=currency,
        code="pay",
        flags=flags,
        timeout_s=timeout_s,
        metadata=draw(st.sampled_from(LEDGER_METADATA)),
    )
    if kind == "malformed":
        return _ledger_malformed(draw, transfer, scene)
    return transfer


def _ledger_resolve(
    draw: st.DrawFn, transfer_id: str, scene: LedgerScene, kind: str
) -> _TransferInput:
    """Post (all, or part, or too much) or void a hold; now and then naming an account, the
    currency or (for a void) an amount, which may or may not match the hold's."""
    posting = kind == "post"
    t = _TransferInput(
        id=transfer_id,
        debit_account_id=None,
        credit_account_id=None,
        amount=draw(st.none() | ledger_amounts()) if posting else None,
        currency=None,
        code=draw(st.sampled_from((None, "capture"))),
        flags=_TransferFlag.POST_PENDING if posting else _TransferFlag.VOID_PENDING,
        pending_id=draw(st.sampled_from((*scene.pending_ids, scene.missing))),
    )
    named = draw(st.sampled_from((None, None, None, "debit", "credit", "currency", "amount")))
    account = st.sampled_from([a for a, _ in scene.accounts])
    if named == "debit":
        return replace(t, debit_account_id=draw(account))
    if named == "credit":
        return replace(t, credit_account_id=draw(account))
    if named == "currency":
        return replace(t, currency=draw(st.sampled_from(LEDGER_CURRENCIES)))
    if named == "amount":
        return replace(t, amount=draw(ledger_amounts()))
    return t


def _ledger_retry(draw: st.DrawFn, scene: LedgerScene) -> _TransferInput:
    old = draw(st.sampled_from(scene.sent))
    field = draw(st.sampled_from(_LEDGER_MUTATIONS))
    other_account = draw(st.sampled_from([a for a, _ in scene.accounts]))
    changes: dict[str, object] = {
        "flags": old.flags ^ _TransferFlag.PENDING,
        "pending_id": None if old.pending_id else scene.missing,
        "timeout_s": old.timeout_s + 1,
        "debit_account_id": other_account,
        "credit_account_id": other_account,
        "amount": (old.amount or 0) + 1,
        "currency": "EUR" if old.currency == "USD" else "USD",
        "code": "other",
        "metadata": '{"other":true}',
    }
    return old if field is None else replace(old, **{field: changes[field]})


def _ledger_malformed(draw: st.DrawFn, t: _TransferInput, scene: LedgerScene) -> _TransferInput:
    how = draw(st.sampled_from(_LEDGER_MALFORMED))
    others = {
        "pending_and_post": {"flags": _TransferFlag.PENDING | _TransferFlag.POST_PENDING},
        "balancing_and_void": {
            "flags": _TransferFlag.BALANCING_DEBIT | _TransferFlag.VOID_PENDING,
            "pending_id": draw(st.sampled_from((*scene.pending_ids, scene.missing))),
        },
        "same_accounts": {"credit_account_id": t.debit_account_id},
        "pending_id_on_plain": {"pending_id": scene.missing},
        "post_without_pending_id": {"flags": _TransferFlag.POST_PENDING},
        "timeout_on_plain": {"timeout_s": draw(st.integers(1, 5))},
        "zero_amount": {"amount": 0},
        "unknown_debit": {"debit_account_id": scene.missing},
        "unknown_credit": {"credit_account_id": scene.missing},
        "other_currency": {"currency": "EUR" if t.currency == "USD" else "USD"},
    }
    return replace(t, **others[how])  # type: ignore[arg-type]


@st.composite
def ledger_requests(
    draw: st.DrawFn, id_prefix: str, scene: LedgerScene, *, max_size: int = 5
) -> list[_TransferInput]:
    """Generate one request: transfers ``id_prefix + k``, some linked into chains; rarely the
    last one linked too (an open chain). Retries keep the flags they were first sent with; now
    and then a transfer repeats an earlier one of the same request (a duplicate in the batch)."""
    # mostly short, so that a batch leaves most accounts (and their expired holds) alone
    size = min(max_size, draw(st.sampled_from((1, 1, 1, 2, 2, 3, 5))))
    transfers: list[_TransferInput] = []
    for k in range(size):
        if transfers and draw(st.integers(0, 9)) == 0:
            transfers.append(draw(st.sampled_from(transfers)))
            continue
        t = draw(ledger_transfers(f"{id_prefix}{k}", scene))
        if _TransferFlag.PENDING in t.flags:  # later ones may post or void it
            scene = replace(scene, pending_ids=(*scene.pending_ids, t.id))
        if t.id == f"{id_prefix}{k}":  # not a retry
            # ~30% linked to the next; the last one rarely (an open chain).
            threshold = 9 if k == size - 1 else 7
            if draw(st.integers(0, 9)) >= threshold:
                t = replace(t, flags=t.flags | _TransferFlag.LINKED)
        transfers.append(t)
    return transfers


# ================================================================================================
# SECTION risk: strategies for hammerlock.risk.model
# ================================================================================================

_RISK_CURRENCIES = ("USD", "EUR", "JPY", "GBP")
_RISK_COUNTRIES = ("US", "GB", "DE", "FR", "us")


@st.composite
def risk_inputs(draw: st.DrawFn) -> _RiskInput:
    """Any charge or refund: amounts around the default thresholds, known and unknown currencies."""
    kind = draw(st.sampled_from(("charge", "charge", "deposit", "refund")))
    amount = draw(
        st.one_of(
            st.integers(1, 2**53 - 1),
            st.sampled_from((999_999, 1_000_000, 1_000_001, 9_999_999, 10_000_000, 19_350_000)),
            st.integers(1, 20_000_000),
        )
    )
    return _RiskInput(
        amount_minor=amount,
        currency=draw(st.sampled_from(_RISK_CURRENCIES)),
        is_deposit=kind == "deposit",
        is_refund=kind == "refund",
        customer_id=draw(st.none() | st.sampled_from(("cus_1", "cus_2"))),
        customer_is_new=draw(st.booleans()),
        card_fingerprint=draw(st.none() | st.sampled_from(("fp_a", "fp_b"))),
        card_country=draw(st.none() | st.sampled_from(_RISK_COUNTRIES)),
        billing_country=draw(st.none() | st.sampled_from(_RISK_COUNTRIES)),
        fingerprint_payments_in_window=draw(st.integers(0, 20)),
        customer_payments_in_window=draw(st.integers(0, 20)),
    )


def _risk_amounts() -> st.SearchStrategy[dict[str, int]]:
    return st.dictionaries(st.sampled_from(_RISK_CURRENCIES), st.integers(1, 30_000_000))


@st.composite
def risk_rules(draw: st.DrawFn) -> _RiskRules:
    """Any valid rules: thresholds in any currency (four-eyes never below review), rules on or
    off, any points and score threshold."""
    review = draw(_risk_amounts())
    four_eyes = {c: max(v, review.get(c, 0)) for c, v in draw(_risk_amounts()).items()}

    def velocity() -> _VelocityRule:
        return _VelocityRule(
            draw(st.booleans()), draw(st.integers(1, 10)), draw(st.integers(0, 100))
        )

    return _RiskRules(
        review_thresholds_minor=review,
        four_eyes_thresholds_minor=four_eyes,
        velocity_window_s=draw(st.integers(1, 86_400)),
        card_velocity=velocity(),
        customer_velocity=velocity(),
        new_customer=_NewCustomerRule(
            draw(st.booleans()), draw(_risk_amounts()), draw(st.integers(0, 100))
        ),
        country_mismatch=_CountryMismatchRule(draw(st.booleans()), draw(st.integers(0, 100))),
        score_review_enabled=draw(st.booleans()),
        score_threshold=draw(st.integers(0, 300)),
    )
