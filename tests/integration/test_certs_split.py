"""``certs`` split between operator and clients: the operator never holds a client private key.

Hardened secure aggregation assumes the server cannot sign round keys as a client; these tests
check that the operator's folder holds no client secret, that the client's secrets are 0600, that
a signed client reaches a real mTLS server (and an unsigned one does not), and that requests that
are malformed, forged or re-register an id under another key are refused.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import tomllib
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedvpa_secure.cli import main as cli_main
from fedvpa_secure.errors import ConfigError, DataError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.proto import federation_pb2_grpc as pb_grpc
from fedvpa_secure.secagg import keys as secagg_keys
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION
from fedvpa_secure.server.settings import RoundSettings
from fedvpa_secure.transport import tls
from fedvpa_secure.transport.pki import (
    build_request,
    client_files,
    init_operator,
    load_identity,
    load_registry,
    make_loopback_federation,
    make_request,
    operator_files,
    sign_request,
)
from tests.integration.fedkit import ToyServer, start_toy_server

pytestmark = pytest.mark.integration

IDS = ["c000", "c001", "c002"]


def _cli(*argv: str) -> int:
    return cli_main(["certs", *map(str, argv)])


def _split_by_cli(tmp: Path) -> tuple[Path, dict[str, Path]]:
    """The real workflow: operator init, each client request, operator sign, answer copied."""
    operator = tmp / "operator"
    assert _cli("init", "--out", operator) == 0
    clients = {cid: tmp / "machines" / cid for cid in IDS}
    for cid, folder in clients.items():
        assert _cli("request", "--client-id", cid, "--out", folder) == 0
        assert _cli("sign", "--ca-dir", operator, "--request", client_files(folder).request) == 0
        issued = client_files(operator_files(operator).issued(cid))
        answer = client_files(folder)
        answer.cert.write_bytes(issued.cert.read_bytes())  # what the client gets back
        answer.ca.write_bytes(issued.ca.read_bytes())
    return operator, clients


def _secrets(folder: Path) -> list[bytes]:
    """Every encoding of a client's private keys we can think of: raw, hex, base64, DER."""
    found = []
    files = client_files(folder)
    identity = load_identity(files.identity)
    tls_key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    raws = [
        identity.private_bytes_raw(),
        tls_key.private_numbers().private_value.to_bytes(32, "big"),
    ]
    ders = [
        k.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for k in (identity, tls_key)
    ]
    for raw in raws:
        found += [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw)]
    found += ders + [base64.b64encode(d) for d in ders]
    return found


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _assert_holds_no_secret_of(folder: Path, clients: dict[str, Path]) -> None:
    files = _files(folder)
    assert files, "nothing to scan: the check would pass vacuously"
    secrets = [s for d in clients.values() for s in _secrets(d)]
    for path in files:
        data = path.read_bytes()
        if b"PRIVATE KEY" in data:
            assert path.name in {"ca.key", "server.key"}, f"{path} holds a private key"
        for secret in secrets:
            assert secret not in data, f"{path} holds a client's private key material"


def test_operator_folder_holds_no_client_private_key(tmp_path: Path) -> None:
    operator, clients = _split_by_cli(tmp_path)
    _assert_holds_no_secret_of(operator, clients)
    # control: the scan does find the secrets where they are
    with pytest.raises(AssertionError, match="private key"):
        _assert_holds_no_secret_of(clients["c000"], clients)


def test_registry_holds_the_clients_public_identity_keys_only(tmp_path: Path) -> None:
    operator, clients = _split_by_cli(tmp_path)
    registry = load_registry(operator_files(operator).registry)
    assert sorted(registry) == IDS
    for cid, folder in clients.items():
        identity = load_identity(client_files(folder).identity)
        assert registry[cid] == secagg_keys.identity_public_bytes(identity)
        assert registry[cid] != identity.private_bytes_raw()
    raw = json.loads(operator_files(operator).registry.read_text())
    assert all(isinstance(v, str) and len(bytes.fromhex(v)) == 32 for v in raw.values())


def test_client_private_keys_are_0600_and_the_request_is_public(tmp_path: Path) -> None:
    _operator, clients = _split_by_cli(tmp_path)
    for folder in clients.values():
        files = client_files(folder)
        for secret in (files.key, files.identity):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        request = files.request.read_bytes()
        assert b"PRIVATE" not in request
        identity = load_identity(files.identity)
        assert identity.private_bytes_raw().hex().encode() not in request


def test_loopback_helper_keeps_client_keys_out_of_the_operator_folder(tmp_path: Path) -> None:
    clients = {cid: tmp_path / "clients" / cid for cid in IDS}
    registry = make_loopback_federation(tmp_path / "operator", clients)
    assert sorted(registry) == IDS
    _assert_holds_no_secret_of(tmp_path / "operator", clients)
    with pytest.raises(ConfigError, match="overlaps the operator folder"):
        make_loopback_federation(tmp_path / "op2", {"c000": tmp_path / "op2" / "clients" / "c"})


def _rounds() -> RoundSettings:
    return RoundSettings(
        rounds=1,
        clients_per_round=3,
        min_survivors=3,
        train_deadline_s=20.0,
        stage_deadline_s=10.0,
        liveness_s=3.0,
        join_timeout_s=20.0,
        max_attempts=1,
    )


def _join(port: int, ca: Path, cert: Path, key: Path, cid: str) -> str:
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        tls.channel_credentials(ca, cert, key),
        options=tls.channel_options(1 << 20),
    )
    with channel:
        stub = pb_grpc.FederationStub(channel)
        request = pb.JoinRequest(client_id=cid, protocol_version=PROTOCOL_VERSION)
        return stub.Join(request, timeout=5).run_id


def _self_signed(folder: Path, cid: str) -> Path:
    """A certificate the unsigned client makes for its own key (no CA vouches for it)."""
    key = serialization.load_pem_private_key(client_files(folder).key.read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cid)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cid)]), critical=False)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = folder / "self-signed.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_signed_client_connects_over_mtls_and_an_unsigned_one_cannot(tmp_path: Path) -> None:
    operator, clients = _split_by_cli(tmp_path)
    unsigned = tmp_path / "machines" / "c003"
    make_request("c003", unsigned)  # asked, never signed
    ca = operator_files(operator).ca
    _coordinator, server, port = start_toy_server(operator, _rounds(), ToyServer())
    try:
        f = client_files(clients["c000"])
        assert _join(port, f.ca, f.cert, f.key, "c000") == "toy"
        with pytest.raises(grpc.RpcError) as err:
            _join(port, ca, _self_signed(unsigned, "c003"), client_files(unsigned).key, "c003")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        # and a client presenting a signed certificate with a key that is not its own fails too
        with pytest.raises(grpc.RpcError) as err:
            _join(port, ca, f.cert, client_files(unsigned).key, "c000")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_reregistering_an_id_with_another_key_is_refused(tmp_path: Path, capsys) -> None:
    operator, clients = _split_by_cli(tmp_path)
    before = operator_files(operator).registry.read_bytes()
    issued = client_files(operator_files(operator).issued("c001")).cert
    cert_before = issued.read_bytes()
    impostor = tmp_path / "impostor"
    make_request("c001", impostor)
    with pytest.raises(ConfigError, match="already registered with a different identity key"):
        sign_request(operator, client_files(impostor).request)
    assert _cli("sign", "--ca-dir", operator, "--request", client_files(impostor).request) == 2
    assert "already registered with a different identity key" in capsys.readouterr().err
    assert operator_files(operator).registry.read_bytes() == before
    assert issued.read_bytes() == cert_before, "no certificate for the impostor's key"
    # control: the client's own request, signed again, is a renewal and accepted
    request, _ = sign_request(operator, client_files(clients["c001"]).request)
    assert request.client_id == "c001"
    assert operator_files(operator).registry.read_bytes() == before


def test_one_identity_key_cannot_register_two_ids(tmp_path: Path) -> None:
    operator, clients = _split_by_cli(tmp_path)
    identity = load_identity(client_files(clients["c000"]).identity)
    second = tmp_path / "second.json"
    second.write_text(
        json.dumps(build_request("c009", ec.generate_private_key(ec.SECP256R1()), identity))
    )
    with pytest.raises(ConfigError, match="already registered for client 'c000'"):
        sign_request(operator, second)
    assert "c009" not in load_registry(operator_files(operator).registry)
    # relabelling c000's own request as c009 fails earlier: its CSR names c000
    raw = json.loads(client_files(clients["c000"]).request.read_text())
    raw["client_id"] = "c009"
    second.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="the CSR names"):
        sign_request(operator, second)


def _tampered(tmp: Path, folder: Path, edit) -> Path:
    raw = json.loads(client_files(folder).request.read_text())
    edit(raw)
    path = tmp / "tampered.json"
    path.write_text(json.dumps(raw))
    return path


def _flip_csr_signature(raw: dict) -> None:
    csr = x509.load_pem_x509_csr(raw["csr"].encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the ECDSA signature at the end of the CSR
    pem = base64.encodebytes(bytes(der)).decode()
    raw["csr"] = f"-----BEGIN CERTIFICATE REQUEST-----\n{pem}-----END CERTIFICATE REQUEST-----\n"


def _other_identity(raw: dict) -> None:
    raw["identity_public_key"] = "11" * 32


def _flip_identity_signature(raw: dict) -> None:
    sig = bytearray(bytes.fromhex(raw["identity_signature"]))
    sig[0] ^= 0x01
    raw["identity_signature"] = sig.hex()


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (_flip_csr_signature, DataError, "CSR signature is invalid"),
        (_flip_identity_signature, DataError, "identity signature is invalid"),
        (_other_identity, DataError, "does not carry the request's identity public key"),
        (lambda r: r.pop("csr"), DataError, "malformed"),
        (lambda r: r.update(csr="not a csr"), DataError, "malformed"),
        (lambda r: r.update(format="v0"), DataError, "malformed"),
        (lambda r: r.update(identity_signature="zz"), DataError, "malformed"),
        (lambda r: r.update(client_id="bad id"), ConfigError, "invalid"),
        (lambda r: r.update(client_id=tls.SERVER_NAME), ConfigError, "reserved"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_registered(
    tmp_path: Path, edit, error, message
) -> None:
    operator = tmp_path / "operator"
    init_operator(operator)
    folder = tmp_path / "c000"
    make_request("c000", folder)
    with pytest.raises(error, match=message):
        sign_request(operator, _tampered(tmp_path, folder, edit))
    assert load_registry(operator_files(operator).registry) == {}
    # control: the untouched request is accepted
    sign_request(operator, client_files(folder).request)
    assert list(load_registry(operator_files(operator).registry)) == ["c000"]


def test_not_json_is_refused(tmp_path: Path) -> None:
    operator = tmp_path / "operator"
    init_operator(operator)
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(DataError, match="not JSON"):
        sign_request(operator, junk)


def test_init_and_request_refuse_to_overwrite_keys(tmp_path: Path) -> None:
    operator = tmp_path / "operator"
    init_operator(operator)
    ca = operator_files(operator).ca_key.read_bytes()
    with pytest.raises(ConfigError, match="already holds a CA"):
        init_operator(operator)
    assert operator_files(operator).ca_key.read_bytes() == ca
    make_request("c000", tmp_path / "c000")
    identity = client_files(tmp_path / "c000").identity.read_bytes()
    with pytest.raises(ConfigError, match="already holds a client key"):
        make_request("c000", tmp_path / "c000")
    assert client_files(tmp_path / "c000").identity.read_bytes() == identity


def test_the_old_one_shot_form_is_refused_with_the_new_commands(tmp_path: Path, capsys) -> None:
    assert _cli("--out", tmp_path / "certs", "--clients", "3") == 2
    err = capsys.readouterr().err
    assert "certs init" in err and "certs request" in err and "certs sign" in err
    assert not (tmp_path / "certs").exists()


def test_demo_writes_the_two_sides_apart(tmp_path: Path) -> None:
    assert _cli("demo", "--out", tmp_path / "demo", "--clients", "3") == 0
    clients = {cid: tmp_path / "demo" / "clients" / cid for cid in IDS}
    assert all(client_files(d).cert.exists() for d in clients.values())
    _assert_holds_no_secret_of(tmp_path / "demo" / "operator", clients)


def test_simulate_keeps_client_keys_in_each_clients_folder(tmp_path: Path) -> None:
    from fedvpa_secure.commands.simulate import prepare_run
    from tests.integration.fedkit import simulate_args

    out = tmp_path / "run"
    _server_toml, ids, files = prepare_run(simulate_args(out, tmp_path / "cache", 3, 1))
    keys = {cid: out / "clients" / cid / "keys" for cid in ids}
    _assert_holds_no_secret_of(out / "certs", keys)
    for cid in ids:
        tls_paths = tomllib.loads(files[cid].read_text())["tls"]
        assert {Path(p).parent for p in tls_paths.values()} == {keys[cid]}
        for secret in (client_files(keys[cid]).key, client_files(keys[cid]).identity):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def _join_at(host: str, port: int, client: Path, cid: str) -> str:
    """Join by dialling ``host``; returns the run id or the failure's one-line reason."""
    f = client_files(client)
    channel = grpc.secure_channel(
        f"{host}:{port}",
        tls.channel_credentials(f.ca, f.cert, f.key),
        options=tls.channel_options(1 << 20),
    )
    with channel:
        request = pb.JoinRequest(client_id=cid, protocol_version=PROTOCOL_VERSION)
        try:
            return pb_grpc.FederationStub(channel).Join(request, timeout=5).run_id
        except grpc.RpcError as err:
            return tls.tls_failure(err.details() or "") or f"{err.code().name}: {err.details()}"


def test_clients_verify_the_address_they_dial_and_the_servers_purpose(tmp_path: Path) -> None:
    """The server certificate names what clients dial (``--server-address``); a client refuses
    a server certificate that does not name the dialled address, and a client certificate
    presented as a server's (its EKU says client) even where its name matches."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from fedvpa_secure.transport import pki

    op, clients = tmp_path / "op", {"c000": tmp_path / "c0", "c001": tmp_path / "c1"}
    clients |= {"c002": tmp_path / "c2"}
    assert _cli("init", "--out", op, "--server-address", "localhost") == 0
    for cid, folder in clients.items():
        make_request(cid, folder)
        sign_request(op, client_files(folder).request, out=folder)
    _coordinator, server, port = start_toy_server(op, _rounds(), ToyServer())
    try:
        assert _join_at("localhost", port, clients["c000"], "c000") == "toy"  # control
        refused = _join_at("127.0.0.1", port, clients["c000"], "c000")
        assert "does not name the address dialled" in refused
    finally:
        server.stop(0)
    # the operator adds the address under the same CA: the same clients now connect by it
    assert _cli("server-cert", "--ca-dir", op, "--server-address", "127.0.0.1") == 0
    _coordinator, server, port = start_toy_server(op, _rounds(), ToyServer())
    try:
        assert _join_at("127.0.0.1", port, clients["c000"], "c000") == "toy"
    finally:
        server.stop(0)
    # an address-like client id is refused at request time; a certificate minted for one anyway
    # (client purpose, as every client certificate) is still refused as a server certificate
    with pytest.raises(ConfigError, match="looks like a network address"):
        make_request("127.0.0.1", tmp_path / "evil")
    ca_cert, ca_key = pki._load_ca(operator_files(op))
    key = ec.generate_private_key(ec.SECP256R1())
    forged = pki._issue(
        "127.0.0.1",
        key.public_key(),
        pki._ca_name(ca_cert),
        ca_key,
        sans=pki.server_names(["127.0.0.1"])[1:],
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    for name in ("ca.pem", "registry.json"):
        (impostor / name).write_bytes((op / name).read_bytes())
    (impostor / "server.pem").write_bytes(pki._pem(forged))
    (impostor / "server.key").write_bytes(pki._key_pem(key))
    _coordinator, server, port = start_toy_server(impostor, _rounds(), ToyServer())
    try:
        refused = _join_at("127.0.0.1", port, clients["c000"], "c000")
        assert "not a server certificate" in refused
    finally:
        server.stop(0)


def test_server_addresses_become_ip_and_dns_names(tmp_path: Path, capsys) -> None:
    from fedvpa_secure.transport.pki import server_names

    names = server_names(["10.0.0.5", "[fd00::5]", "Fed.Example.org"])
    assert [type(n).__name__ for n in names] == ["DNSName", "IPAddress", "IPAddress", "DNSName"]
    assert names[-1].value == "fed.example.org"
    for bad in ("10.0.0.5:50051", "10.0.0.256"):
        assert _cli("init", "--out", tmp_path / "x", "--server-address", bad) == 2
        assert "neither an IP address nor a host name" in capsys.readouterr().err
    assert _cli("init", "--out", tmp_path / "x", "--server-address", "0.0.0.0") == 2
    assert "not an address clients can dial" in capsys.readouterr().err
    for reserved in ("LOCALHOST", "fed.example.org", "10.0.0.5"):
        with pytest.raises(ConfigError, match=r"reserved|network address"):
            make_request(reserved, tmp_path / "r")
