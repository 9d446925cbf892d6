package deps

import (
	_ "github.com/BurntSushi/toml"
	_ "github.com/mdlayher/arp"
	_ "github.com/mdlayher/ethernet"
	_ "github.com/mdlayher/packet"
	_ "github.com/moby/ipvs"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/vishvananda/netlink"
	_ "golang.org/x/net/ipv4"
	_ "golang.org/x/sys/unix"
)
