"""Circuit discovery over SAEs spliced into a model: splicing with error terms, attribution,
feature graphs and their faithfulness."""
