"""Small statistics the controller and the converters share (the Wilson interval), so neither keeps its own copy and
neither imports the other: a floor beside `protocol` that imports nothing of ours."""
