"""Federated training across sites: the SiteTask contract, server strategies and an in-process simulator."""
