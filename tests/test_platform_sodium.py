"""libsodium's Ed25519 on the dispatcher's hot path signs exactly as the contract's Signer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.contract.signing import Signer, Verifier, generate_private_key, generate_secret
from tidings.platform.dispatcher import Dispatcher
from tidings.platform.sodium import SodiumSigner, sodium_signer
from tidings.store.engine import create_engine

KEY = generate_private_key()
SECRET = generate_secret()


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=4096), timestamp=st.integers(min_value=0, max_value=2**40),
       msg_id=st.from_regex(r"msg_[0-9a-f]{1,24}", fullmatch=True), prefix=st.sampled_from(["Tidings", "Acme"]))
def test_same_headers_as_the_contract_signer(body, timestamp, msg_id, prefix):
    contract = Signer(KEY, vendor_prefix=prefix)
    sodium = sodium_signer(contract)
    assert isinstance(sodium, SodiumSigner)
    headers = sodium.sign(body, msg_id=msg_id, timestamp=timestamp, secrets=[SECRET])
    assert headers == contract.sign(body, msg_id=msg_id, timestamp=timestamp, secrets=[SECRET])
    assert sodium.vendor_signature(body) == contract.vendor_signature(body)
    # and the contract's verifier accepts them
    verifier = Verifier(public_keys=(KEY.public_key(),), secrets=(SECRET,), vendor_prefix=prefix,
                        tolerance_seconds=2**42)  # any timestamp drawn above
    assert verifier.verify(body, headers)


def test_a_signer_subclass_is_left_as_it_is():
    class Custom(Signer):
        pass

    custom = Custom(KEY)
    assert sodium_signer(custom) is custom
    already = sodium_signer(Signer(KEY))
    assert sodium_signer(already) is already


async def test_the_dispatcher_signs_with_libsodium(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    try:
        dispatcher = Dispatcher(engine, Signer(KEY))
        assert isinstance(dispatcher.signer, SodiumSigner)
        assert dispatcher.signer.private_key is KEY
    finally:
        await engine.dispose()
