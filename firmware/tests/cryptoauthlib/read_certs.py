"""Microchip's cryptoauthlib rebuilds the signer and device certificates from the chip alone
(atcacert_read_cert through its kit-protocol UART HAL), using only the certificate
definition `provisioner emit certdef` wrote as JSON. Prints `signer HEX` and `device HEX`.
Usage: read_certs.py PORT DEFINITION.json ROOT.crt"""
import ctypes
import json
import os
import sys

from cryptoauthlib import atcab_init, atcab_read_pubkey, atcab_release, load_cryptoauthlib
from cryptoauthlib import iface
from cryptoauthlib.atcacert import (atcacert_cert_element_t, atcacert_cert_loc_t, atcacert_def_t,
                                    atcacert_device_loc_t, atcacert_read_cert)
from cryptoauthlib.library import AtcaReference
from cryptography import x509
from cryptography.hazmat.primitives import serialization

PORT, DEFINITION, ROOT = sys.argv[1:4]
ATECC508A = 2
keep = []  # buffers the C structures point into


def device_loc(d):
    return atcacert_device_loc_t(zone=d["zone"], slot=d["slot"], is_genkey=d["is_genkey"],
                                 offset=d["offset"], count=d["count"])


def cert_loc(d):
    return atcacert_cert_loc_t(offset=d["offset"], count=d["count"])


def definition(j):
    """An atcacert_def_t from the JSON, field by field as the C structure names them."""
    d = atcacert_def_t()
    for name in ["type", "private_key_slot", "template_id", "chain_id", "std_sig_size", "sn_source",
                 "issue_date_format", "expire_date_format", "expire_years"]:
        setattr(d, name, j[name])
    for name in ["comp_cert_dev_loc", "cert_sn_dev_loc", "public_key_dev_loc"]:
        setattr(d, name, device_loc(j[name]))
    d.tbs_cert_loc = cert_loc(j["tbs_cert_loc"])
    std = (atcacert_cert_loc_t * len(j["std_cert_elements"]))(*[cert_loc(e) for e in j["std_cert_elements"]])
    ctypes.memmove(ctypes.addressof(d) + atcacert_def_t.std_cert_elements.offset, std, ctypes.sizeof(std))
    elements = (atcacert_cert_element_t * max(1, len(j["cert_elements"])))()
    for i, e in enumerate(j["cert_elements"]):
        elements[i] = atcacert_cert_element_t(id=e["id"].encode(), device_loc=device_loc(e["device_loc"]),
                                              cert_loc=cert_loc(e["cert_loc"]), transforms=e["transforms"])
    keep.append(elements)
    ctypes.memmove(ctypes.addressof(d) + atcacert_def_t.cert_elements.offset,
                   ctypes.byref(ctypes.cast(elements, ctypes.c_void_p)), ctypes.sizeof(ctypes.c_void_p))
    d.cert_elements_count = len(j["cert_elements"])
    template = bytes.fromhex(j["cert_template"])
    buf = (ctypes.c_uint8 * len(template))(*template)
    keep.append(buf)
    ctypes.memmove(ctypes.addressof(d) + atcacert_def_t.cert_template.offset,
                   ctypes.byref(ctypes.cast(buf, ctypes.c_void_p)), ctypes.sizeof(ctypes.c_void_p))
    d.cert_template_size = len(template)
    if j["ca_cert_def"] is not None:
        ca = definition(j["ca_cert_def"])
        keep.append(ca)
        ctypes.memmove(ctypes.addressof(d) + atcacert_def_t.ca_cert_def.offset,
                       ctypes.byref(ctypes.cast(ctypes.pointer(ca), ctypes.c_void_p)), ctypes.sizeof(ctypes.c_void_p))
    return d


def read_cert(cert_def, ca_public_key):
    # A loaded machine can make the kit HAL's reply deadline pass: a failed read is retried
    # (a wrong definition fails every time).
    for attempt in range(3):
        cert = bytearray(1024)
        size = AtcaReference(len(cert))
        status = atcacert_read_cert(cert_def, bytearray(ca_public_key), cert, size)
        if status == 0:
            return bytes(cert[:size.value])
        print(f"atcacert_read_cert attempt {attempt + 1}: status {status:#x}", file=sys.stderr, flush=True)
    raise AssertionError(f"atcacert_read_cert: status {status:#x}")


load_cryptoauthlib()
cfg = iface._iface_load_default_config("cfg_ateccx08_kituart_default")
cfg.iface_type = int(iface.ATCAIfaceType.ATCA_UART_IFACE)
cfg.devtype = ATECC508A
cfg.cfg.atcauart.baud = 115200
# The kit HAL copies the port path into a short fixed buffer: give it the pty itself.
port_buf = ctypes.create_string_buffer(os.path.realpath(PORT).encode())
cfg.cfg_data = ctypes.addressof(port_buf)
assert atcab_init(cfg) == 0, "atcab_init over the kit UART HAL"
with open(DEFINITION) as f:
    device_def = definition(json.load(f))
with open(ROOT, "rb") as f:
    root = x509.load_pem_x509_certificate(f.read()).public_key()
root_xy = root.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
signer_def = keep[-1]  # the definition ca_cert_def points at
signer = read_cert(signer_def, root_xy)
# The signer's public key as the chip holds it (padded, in its slot).
signer_xy = bytearray(64)
assert atcab_read_pubkey(signer_def.public_key_dev_loc.slot, signer_xy) == 0, "atcab_read_pubkey"
device = read_cert(device_def, signer_xy)
atcab_release()
print("signer", signer.hex())
print("device", device.hex())
