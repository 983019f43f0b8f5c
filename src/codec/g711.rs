//! G.711 µ-law and A-law (ITU-T G.711): table-driven conversion, no allocation.
