"""How clients and the server cooperate (D-Turbo-VBI, DESIGN section 6).

Empty so far: federation is a later issue; the package exists so the three-room layout
(models, inference, federation) is fixed from the start.
"""
