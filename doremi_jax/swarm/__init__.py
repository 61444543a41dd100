"""Swarm methods (issue 15): many small proxies on sampled mixtures, a
fitted mixing law, and the mixture it proposes. `law` holds the math."""
