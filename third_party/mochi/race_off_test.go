// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

//go:build !race

package mqtt

const raceEnabled = false
