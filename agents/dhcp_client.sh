#!/bin/sh
# What a virtual machine's DHCP clients do with their leases. IPv6: ISC dhclient -6 runs this script
# with $reason (BOUND6, RENEW6, ...) and the lease in $new_ip6_address etc.; the router and the on-link
# /64 come from the host's router advertisement, which the kernel takes itself.
# IPv4: busybox udhcpc runs this script with the
# lease in its environment ($ip, $subnet, $router, $dns, $domain, $mtu, $lease, $ntpsrv, ...). The lab
# runs udhcpc in each TAP instance (agents/lab.py); this configures the instance with `ip`, writes the
# instance's own resolv.conf (/etc/netns/<its namespace>/, never the machine's) and prints the lease
# (the lab's dhcp-<name>.out keeps it).
case "${1:-$reason}" in
  PREINIT6)
    ip link set "$interface" up
    ;;
  BOUND6|RENEW6|REBIND6)
    ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" valid_lft "$new_max_life" \
      preferred_lft "$new_preferred_life"
    echo "lease6 $reason: ip6=$new_ip6_address/$new_ip6_prefixlen dns6=$new_dhcp6_name_servers search=$new_dhcp6_domain_search"
    ;;
  deconfig)
    ip link set "$interface" up
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/$subnet" dev "$interface"
    for r in $router; do ip -4 route replace default via "$r" dev "$interface"; break; done
    ns=$(ip netns identify)
    if [ -n "$ns" ] && [ -d "/etc/netns/$ns" ]; then
      {
        [ -n "$domain" ] && echo "search $domain"
        for d in $dns; do echo "nameserver $d"; done
        echo "options timeout:1 attempts:1"
      } > "/etc/netns/$ns/resolv.conf"
    fi
    echo "lease $1: ip=$ip subnet=$subnet router=$router dns=$dns domain=$domain mtu=$mtu lease=$lease ntp=$ntpsrv serverid=$serverid hostname=$hostname"
    ;;
  leasefail|nak)
    echo "lease $1: $message" >&2
    ;;
esac
exit 0
