"""The dataset sources, one module each (the contract: `egjax.data.source`)."""
