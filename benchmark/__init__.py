"""biobench experiment machinery: data, training, records, grids, tables, plots."""
__version__ = "0.1.0"
