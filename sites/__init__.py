"""The site registry: sites, the hostnames they may be tracked from, their time zones."""
