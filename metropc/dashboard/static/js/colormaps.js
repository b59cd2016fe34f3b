// Colour maps for images: a few anchor colours per map, interpolated
// linearly into 256-entry lookup tables (made once per map, on first use).
// The anchors are sampled from the published definitions of these maps.

const ANCHORS = {
  viridis: ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779",
            "#6ece58", "#b5de2b", "#fde725"],
  magma: ["#000004", "#1c1044", "#4f127b", "#812581", "#b5367a", "#e55964", "#fb8761",
          "#fec287", "#fcfdbf"],
  inferno: ["#000004", "#280b54", "#65156e", "#9f2a63", "#d44842", "#f57d15", "#fac127",
            "#fcffa4"],
  plasma: ["#0d0887", "#5302a3", "#8b0aa5", "#b83289", "#db5c68", "#f48849", "#febd2a",
           "#f0f921"],
  cividis: ["#00224e", "#123570", "#3b496c", "#575d6d", "#707173", "#8a8779", "#a69d75",
            "#c4b56c", "#e4cf5b", "#fee838"],
  gray: ["#000000", "#ffffff"],
  coolwarm: ["#3b4cc0", "#7b9ff9", "#c0d4f5", "#dddddd", "#f2cbb7", "#ee8468", "#b40426"],
  jet: ["#00007f", "#0000ff", "#007fff", "#00ffff", "#7fff7f", "#ffff00", "#ff7f00",
        "#ff0000", "#7f0000"],
};

export const COLORMAP_NAMES = Object.keys(ANCHORS);

const LUTS = {};

// A Uint8ClampedArray of 256 RGBA entries for colour map `name`.
export function lut(name) {
  if (LUTS[name]) return LUTS[name];
  const anchors = (ANCHORS[name] || ANCHORS.viridis).map(h => [1, 3, 5].map(i => parseInt(h.substr(i, 2), 16)));
  const table = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const f = i / 255 * (anchors.length - 1);
    const k = Math.min(anchors.length - 2, Math.floor(f));
    const t = f - k;
    for (let c = 0; c < 3; c++) table[i * 4 + c] = anchors[k][c] * (1 - t) + anchors[k + 1][c] * t;
    table[i * 4 + 3] = 255;
  }
  LUTS[name] = table;
  return table;
}
