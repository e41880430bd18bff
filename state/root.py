"""The state root: an incremental digest of every ledger entry.

The ledger state is a set of (key, value) byte pairs. Its digest is a lattice
hash in the manner of Bellare and Micciancio's AdHash: each pair maps through
SHAKE-256 to a 4096-bit integer, and the accumulator is the sum of those
integers modulo 2**4096. Adding or removing a pair is one hash and one
addition, so a block costs work in proportion to the entries it changes, not
to the size of the state, and the result depends only on the set of pairs,
never on the order in which they were written.

The state root is SHA-256 over a domain tag and the 512-byte accumulator.
Breaking it means finding a multiset of pairs that sums to a chosen value;
the best known generic method (Wagner's generalised birthday algorithm) costs
about 2**(2*sqrt(4096)) = 2**128 operations at this width.

An auditor recomputes the root from scratch by summing element(key, value)
over every entry of the state namespace (docs/state-root.md).
"""

from __future__ import annotations

import hashlib

from state.bounded import drop_oldest_quarter

ACC_BYTES = 512
_MASK = (1 << (8 * ACC_BYTES)) - 1
_ELEMENT_DOMAIN = b"perkchain/state-entry/v1\x00"
_ROOT_DOMAIN = b"perkchain/state-root/v1\x00"


# The domain tag and framed key length of every key length in use.
_PREFIXES: dict[int, bytes] = {}


def element(key: bytes, value: bytes) -> int:
    """The group element of one (key, value) pair; the key length is framed."""
    prefix = _PREFIXES.get(len(key))
    if prefix is None:
        prefix = _PREFIXES[len(key)] = _ELEMENT_DOMAIN + len(key).to_bytes(2, "big")
    digest = hashlib.shake_256(prefix + key + value).digest(ACC_BYTES)
    return int.from_bytes(digest, "little")


class Accumulator:
    """The running sum of the elements of all state entries."""

    __slots__ = ("value",)

    def __init__(self, value: int = 0):
        self.value = value & _MASK

    @classmethod
    def from_bytes(cls, data: bytes) -> Accumulator:
        if len(data) != ACC_BYTES:
            raise ValueError(f"accumulator must be {ACC_BYTES} bytes")
        return cls(int.from_bytes(data, "little"))

    def to_bytes(self) -> bytes:
        return self.value.to_bytes(ACC_BYTES, "little")

    def copy(self) -> Accumulator:
        return Accumulator(self.value)

    def add(self, key: bytes, value: bytes) -> None:
        self.value = (self.value + element(key, value)) & _MASK

    def remove(self, key: bytes, value: bytes) -> None:
        self.value = (self.value - element(key, value)) & _MASK

    def update(
        self,
        added: list[tuple[bytes, bytes]],
        removed: list[tuple[bytes, bytes]],
        memo: ElementMemo | None = None,
    ) -> None:
        """Add and remove many entries at once (one reduction at the end).

        With a memo, the element of an entry removed now is usually the one
        computed when it was added by an earlier block: it is taken from there.
        """
        total = self.value
        if memo is None:
            for key, value in added:
                total += element(key, value)
            for key, value in removed:
                total -= element(key, value)
            self.value = total & _MASK
            return

        known = memo.known
        for key, value in removed:
            found = known.get(key)
            if found is not None and found[0] == value:
                total -= found[1]
            else:
                total -= element(key, value)
        # Only an entry that changed is likely to change again (an account, a
        # counter); a new one (an order) is usually written once, so only the
        # elements of changed entries are remembered.
        changed = {key for key, _ in removed}
        remembered = []
        for key, value in added:
            new = element(key, value)
            total += new
            if key in changed:
                remembered.append((key, value, new))
        memo.remember_all(remembered)
        self.value = total & _MASK

    def replace(self, key: bytes, old: bytes | None, new: bytes | None) -> None:
        """Account for one entry changing from `old` to `new` (None: absent)."""
        if old == new:
            return
        if old is not None:
            self.remove(key, old)
        if new is not None:
            self.add(key, new)

    def root(self) -> bytes:
        return hashlib.sha256(_ROOT_DOMAIN + self.to_bytes()).digest()


class ElementMemo:
    """The element of the value each key was last given, for recently changed
    keys.

    An entry that changes again (a customer buying again, a merchant's
    counters) is removed with the value an earlier block added, whose element
    was computed then. An element is a pure function of key and value and the
    memo checks the value, so a hit is always right, whichever blocks were
    committed; the memo only saves work. Bounded by `capacity` keys; the
    oldest quarter goes when it is full (an element is 512 bytes: about 20 MB
    when full).
    """

    def __init__(self, capacity: int = 32_000):
        self.capacity = capacity
        # key -> (value, element of (key, value)); read by Accumulator.update.
        self.known: dict[bytes, tuple[bytes, int]] = {}

    def element(self, key: bytes, value: bytes) -> int:
        found = self.known.get(key)
        if found is not None and found[0] == value:
            return found[1]
        return element(key, value)

    def remember_all(self, entries: list[tuple[bytes, bytes, int]]) -> None:
        """Keep (key, value, element) triples, the oldest going when full."""
        known, capacity = self.known, self.capacity
        for key, value, result in entries:
            if key not in known and len(known) >= capacity:
                drop_oldest_quarter(known)
            known[key] = (value, result)
