"""How clients and the server cooperate: D-Turbo-VBI (arXiv:2404.07532).

Not built yet: the federated rounds are sketched in ``docs/algorithm.md``. The package exists so
the layout (ops, models, inference, federation) is fixed from the start.
"""
