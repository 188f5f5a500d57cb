"""A client address to its country, at the edge, on every request: well under a microsecond.

The data are the five Regional Internet Registries' delegation files, which the package
iptocc builds into its native module (no file read, no download, about 1 MB); each of its
releases refreshes them. They name the country each block is registered to, which is where
it is used for about 95% of IPv4 addresses (docs/enrichment.md: the sources compared, their
licences, costs and updating).
"""

from __future__ import annotations

import iptocc

# Registry codes that are regions, not countries: Europe and Asia-Pacific blocks.
_NOT_COUNTRIES = frozenset({"EU", "AP"})


class CountryLookup:
    """Made once at start; `country_of` is then a pure function of the address."""

    def __init__(self) -> None:
        # A broken or empty build of the data would silently leave every country unset.
        if iptocc.country_code("8.8.8.8") != "US":
            raise RuntimeError("iptocc's address data is missing or damaged (8.8.8.8 is not US)")

    def country_of(self, ip: str) -> str | None:
        """ISO 3166-1 alpha-2 code, upper case, of an IPv4 or IPv6 address in text form;
        None for private, loopback, reserved or unassigned addresses and for non-addresses."""
        if ip.startswith("::") and "." in ip:  # "::ffff:192.0.2.1": IPv4 on a dual-stack socket
            ip = ip.rpartition(":")[2]
        code = iptocc.country_code(ip)
        if code is None or code in _NOT_COUNTRIES:
            return None
        return code
