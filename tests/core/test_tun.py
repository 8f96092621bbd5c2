"""vswitch.tun without root: the ioctl numbers, the flags an ENI device is opened with, and the choice a
restarted agent makes about the device it finds in an instance (``reuse_verdict``)."""

import pytest
import pytun

from vswitch import tun
from vswitch.tun import BUSY, CREATE, REPLACE, REUSE, FoundDevice, reuse_verdict

ENI = "eni-00000000000000c1"


def _iow(kind: str, nr: int, size: int) -> int:
    """Linux's _IOW(type, nr, size) (asm-generic/ioctl.h): direction write = 1 at bit 30."""
    return 1 << 30 | size << 16 | ord(kind) << 8 | nr


def test_ioctl_numbers_are_the_kernels():
    assert tun.TUNSETPERSIST == 0x400454CB == _iow("T", 203, 4)  # if_tun.h: _IOW('T', 203, int)
    assert tun.TUNSETOFFLOAD == _iow("T", 208, 4)
    assert tun.TUNSETVNETHDRSZ == _iow("T", 216, 4)


def test_device_flags():
    assert tun.device_flags(False, True) == pytun.IFF_TUN | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR == 0x5001
    assert tun.device_flags(False, False) == pytun.IFF_TUN | pytun.IFF_NO_PI == 0x1001
    # A TAP never has the virtio header here, whatever is asked.
    assert tun.device_flags(True, True) == tun.device_flags(True, False) == pytun.IFF_TAP | pytun.IFF_NO_PI == 0x1002


def ours(**kw) -> FoundDevice:
    """A TUN left by a stopped agent for ENI: persistent, nobody attached, its addresses on it."""
    base = dict(kind="tun", tun_type=tun.IFLA_TUN_TYPE_TUN, vnet_hdr=True, persist=True, carrier=False,
                alias=ENI, addresses=frozenset({"10.0.1.4/24"}))
    return FoundDevice(**{**base, **kw})


def test_our_own_device_is_reused_with_the_flags_it_has():
    assert reuse_verdict(ours(), ENI, False, "10.0.1.4/24")[0] == REUSE
    assert reuse_verdict(ours(vnet_hdr=False), ENI, False, "10.0.1.4/24")[0] == REUSE  # made without offloads
    dual = ours(addresses=frozenset({"10.0.1.4/24", "2001:db8:100:1::4/64"}))
    assert reuse_verdict(dual, ENI, False, "10.0.1.4/24", "2001:db8:100:1::4/64")[0] == REUSE
    tap = ours(tun_type=tun.IFLA_TUN_TYPE_TAP, vnet_hdr=False, mac="02:00:00:00:00:c1", addresses=frozenset())
    assert reuse_verdict(tap, ENI, True, mac="02:00:00:00:00:C1")[0] == REUSE  # a VM's addresses are its own


@pytest.mark.parametrize("found, args, action", [
    (None, (), CREATE),
    (ours(alias="eni-00000000000000c2"), (), REPLACE),  # another ENI's, left behind
    (ours(alias=""), (), REPLACE),
    (ours(tun_type=tun.IFLA_TUN_TYPE_TAP), (), REPLACE),  # the ENI became a TUN's while no agent ran
    (ours(persist=False), (), REPLACE),
    (ours(addresses=frozenset({"10.0.1.5/24"})), (), REPLACE),
    (ours(addresses=frozenset({"10.0.1.4/24", "2001:db8:100:1::4/64"})), (), REPLACE),  # IPv6 taken away
    (ours(), ("2001:db8:100:1::4/64",), REPLACE),  # IPv6 given
    (ours(carrier=True), (), BUSY),  # another agent serves it (an instance moving between hosts)
    (ours(kind="veth"), (), BUSY),  # not ours to delete
    (ours(kind=None), (), BUSY),
])
def test_what_is_not_this_enis_device_now_is_replaced_or_left(found, args, action):
    assert reuse_verdict(found, ENI, False, "10.0.1.4/24", *args)[0] == action


def test_a_tap_with_another_mac_or_a_tun_for_a_tap_is_replaced():
    tap = ours(tun_type=tun.IFLA_TUN_TYPE_TAP, vnet_hdr=False, mac="02:00:00:00:00:c1")
    assert reuse_verdict(tap, ENI, True, mac="02:00:00:00:00:c2")[0] == REPLACE
    assert reuse_verdict(ours(), ENI, True, mac="02:00:00:00:00:c1")[0] == REPLACE
