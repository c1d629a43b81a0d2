"""Image data: the embedded synthetic parts set and Pascal VOC / Pascal-Part."""
