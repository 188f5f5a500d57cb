"""The reporting API: daily figures per site for dashboards."""
