"""Microchip's cryptoauthlib, through its kit-protocol UART HAL, provisions the emulated
ATECC508A behind sensor-sim's serial bridge; every result is checked independently with the
`cryptography` package. Usage: test_kit.py PORT (the sim's --link path)."""
import ctypes
import hashlib
import os
import sys
import traceback

from cryptoauthlib import (atcab_ecdh, atcab_genkey, atcab_get_pubkey, atcab_info, atcab_init,
                           atcab_is_locked, atcab_lock_config_zone_crc, atcab_lock_data_zone, atcab_priv_write,
                           atcab_random, atcab_read_bytes_zone, atcab_read_config_zone, atcab_release, atcab_sign,
                           atcab_write_bytes_zone, atcab_write_config_zone, atcab_write_zone, load_cryptoauthlib)
from cryptoauthlib import iface
from cryptoauthlib.library import AtcaReference
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

ATCA_SUCCESS = 0
PORT = sys.argv[1]
ATECC508A = 2
KEY_SLOT = 0        # GenKey'd device key: external sign + ECDH (clear result)
INJECT_SLOT = 1     # key injected with an encrypted PrivWrite
WRITE_KEY_SLOT = 4  # the write key authorising that PrivWrite
WRITE_KEY = bytes(range(0x40, 0x60))
CERT_SLOT = 10      # 72 bytes, public, written in clear after the data lock (Trust&GO's device cert)

results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
        print(f"ok   {name}", flush=True)
    except Exception as e:  # noqa: BLE001 - report and continue
        results.append((name, e))
        print(f"FAIL {name}: {e}", flush=True)
        traceback.print_exc()


def ok(status, what):
    assert status == ATCA_SUCCESS, f"{what}: status {status!r}"


def crc16(data):
    """atCRC: poly 0x8005, init 0, bits LSB first, unreflected."""
    crc = 0
    for byte in data:
        for bit in range(8):
            data_bit = (byte >> bit) & 1
            crc_bit = (crc >> 15) & 1
            crc = (crc << 1) & 0xFFFF
            if data_bit != crc_bit:
                crc ^= 0x8005
    return crc


def public_key(xy):
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + bytes(xy))


def verify(xy, digest, rs):
    sig = encode_dss_signature(int.from_bytes(bytes(rs[:32]), "big"), int.from_bytes(bytes(rs[32:]), "big"))
    public_key(xy).verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))


load_cryptoauthlib()
cfg = iface._iface_load_default_config("cfg_ateccx08_kituart_default")
cfg.iface_type = int(iface.ATCAIfaceType.ATCA_UART_IFACE)
cfg.devtype = ATECC508A
cfg.cfg.atcauart.baud = 115200
port_buf = ctypes.create_string_buffer(PORT.encode())
cfg.cfg_data = ctypes.addressof(port_buf)
state = {}


def t_init():
    ok(atcab_init(cfg), "atcab_init over the kit UART HAL")


def t_info():
    rev = bytearray(4)
    ok(atcab_info(rev), "Info")
    assert rev == bytes.fromhex("00005000"), rev.hex()


def t_read_config():
    conf = bytearray(128)
    ok(atcab_read_config_zone(conf), "read config zone")
    assert conf[0:2] == b"\x01\x23" and conf[12] == 0xEE, conf.hex()
    assert conf[87] == 0x55, "config zone unlocked on a blank chip"
    state["config"] = conf


def t_write_config():
    conf = bytearray(state["config"])

    def slot(i, slot_config, key_config):
        conf[20 + 2 * i:22 + 2 * i] = slot_config.to_bytes(2, "little")
        conf[96 + 2 * i:98 + 2 * i] = key_config.to_bytes(2, "little")

    # IsSecret, ReadKey = ext sign | int sign | ECDH (clear); WriteConfig: GenKey allowed.
    slot(KEY_SLOT, 0x2087, 0x0033)
    # IsSecret, ext sign; WriteKey = 4, WriteConfig = Encrypt (PrivWrite needs bit 14).
    slot(INJECT_SLOT, 0x4000 | (WRITE_KEY_SLOT << 8) | 0x81, 0x0033)
    # The write key: a secret 32-byte non-ECC key.
    slot(WRITE_KEY_SLOT, 0x0080, 0x001C)
    # A compressed certificate's slot: WriteConfig Always, not secret, read in clear, Lockable.
    slot(CERT_SLOT, 0x0000, 0x003C)
    ok(atcab_write_config_zone(bytes(conf)), "write config zone")
    back = bytearray(128)
    ok(atcab_read_config_zone(back), "read back")
    for i in (KEY_SLOT, INJECT_SLOT, WRITE_KEY_SLOT, CERT_SLOT):
        assert back[20 + 2 * i:22 + 2 * i] == conf[20 + 2 * i:22 + 2 * i], f"SlotConfig {i}"
        assert back[96 + 2 * i:98 + 2 * i] == conf[96 + 2 * i:98 + 2 * i], f"KeyConfig {i}"
    state["config"] = back


def t_lock_config():
    conf = state["config"]
    wrong = (crc16(conf) + 1) & 0xFFFF
    assert atcab_lock_config_zone_crc(wrong) != ATCA_SUCCESS, "a wrong CRC must not lock"
    ok(atcab_lock_config_zone_crc(crc16(conf)), "lock config zone with its CRC")
    locked = AtcaReference(False)
    ok(atcab_is_locked(0, locked), "is_locked(config)")
    assert locked.value


def t_random():
    a, b = bytearray(32), bytearray(32)
    ok(atcab_random(a), "Random")
    ok(atcab_random(b), "Random")
    assert a != b and a != bytes.fromhex("ffff0000" * 8), a.hex()


def t_write_key():
    ok(atcab_write_zone(2, WRITE_KEY_SLOT, 0, 0, WRITE_KEY, 32), "write the write key")


def t_genkey():
    xy = bytearray(64)
    ok(atcab_genkey(KEY_SLOT, xy), "GenKey")
    again = bytearray(64)
    ok(atcab_get_pubkey(KEY_SLOT, again), "read the public key")
    assert again == xy
    public_key(xy)  # a valid P-256 point
    state["pub"] = bytes(xy)


def t_sign():
    digest = hashlib.sha256(b"provisioning-first").digest()
    rs = bytearray(64)
    ok(atcab_sign(KEY_SLOT, digest, rs), "Sign")
    verify(state["pub"], digest, rs)


def t_ecdh():
    host = ec.generate_private_key(ec.SECP256R1())
    pt = host.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    pms = bytearray(32)
    ok(atcab_ecdh(KEY_SLOT, pt[1:], pms), "ECDH")
    assert bytes(pms) == host.exchange(ec.ECDH(), public_key(state["pub"])), "shared secrets differ"


def t_lock_data():
    ok(atcab_lock_data_zone(), "lock the data zone")
    locked = AtcaReference(False)
    ok(atcab_is_locked(1, locked), "is_locked(data)")
    assert locked.value


def t_privwrite():
    key = ec.generate_private_key(ec.SECP256R1())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    ok(atcab_priv_write(INJECT_SLOT, b"\x00" * 4 + scalar, WRITE_KEY_SLOT, WRITE_KEY, os.urandom(20)),
       "encrypted PrivWrite")
    digest = hashlib.sha256(b"injected").digest()
    rs = bytearray(64)
    ok(atcab_sign(INJECT_SLOT, digest, rs), "Sign with the injected key")
    xy = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    verify(xy, digest, rs)
    state["injected"] = xy


def t_wrong_write_key():
    other = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
    status = atcab_priv_write(INJECT_SLOT, b"\x00" * 4 + other, WRITE_KEY_SLOT, bytes(32), os.urandom(20))
    assert status != ATCA_SUCCESS, "a wrong write key must be refused"
    print(f"     wrong write key -> status {status!r}")
    digest = hashlib.sha256(b"still the old key").digest()
    rs = bytearray(64)
    ok(atcab_sign(INJECT_SLOT, digest, rs), "Sign after the refused PrivWrite")
    verify(state["injected"], digest, rs)


def t_write_72_bytes():
    # atcacert_write_cert's path: calib_write_bytes_zone sends two 32-byte writes and the
    # 8-byte tail as two 4-byte writes; calib_read_bytes_zone reads it back the same way.
    comp = os.urandom(72)
    ok(atcab_write_bytes_zone(2, CERT_SLOT, 0, comp, 72), "write 72 bytes (2 x 32 + 2 x 4)")
    back = bytearray(72)
    ok(atcab_read_bytes_zone(2, CERT_SLOT, 0, back, 72), "read 72 bytes back")
    assert bytes(back) == comp, back.hex()
    # Nothing past the slot: a 4-byte write at byte 72 is refused, the slot unchanged.
    assert atcab_write_zone(2, CERT_SLOT, 2, 2, bytes(4), 4) != ATCA_SUCCESS, "a write past the slot"
    ok(atcab_read_bytes_zone(2, CERT_SLOT, 0, back, 72), "read again")
    assert bytes(back) == comp


for name, fn in [("init", t_init), ("info", t_info), ("read config zone", t_read_config),
                 ("write config zone", t_write_config), ("lock config zone with CRC", t_lock_config),
                 ("random", t_random), ("write key into its slot", t_write_key), ("genkey + read pubkey", t_genkey),
                 ("sign verified by cryptography", t_sign), ("ecdh", t_ecdh), ("lock data zone", t_lock_data),
                 ("encrypted privwrite, sign verifies", t_privwrite), ("wrong write key fails", t_wrong_write_key),
                 ("72-byte slot written and read as cryptoauthlib does", t_write_72_bytes)]:
    check(name, fn)
    if name == "init" and results[-1][1] is not None:
        break
atcab_release()
failed = sum(1 for _, e in results if e is not None)
print(f"cryptoauthlib: {len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
